// CUDA kernels of stitch_patches (the adjoint of extract_patches), optionally weighted.
//
// Default: one thread per patch value scatters its four bilinear shares into the canvas
// with atomicAdd (and, for channel 0, the weight's shares into the weight map). Fast,
// but the order of the additions into a pixel varies from run to run.
// Deterministic (torch.use_deterministic_algorithms(True)): one thread per canvas pixel
// gathers the contributions of the patches in index order with stitch_gather, the very
// sum the CPU kernel runs, so results are identical on every run.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/bilinear.h"
#include "../common/stitch_host.h"
#include "launch.h"

namespace ptycho_fast {
namespace {

// What both stitch kernels read and write (passed by value). weights: nullptr, (ph, pw)
// shared, or one (ph, pw) window per patch; weight_map is written only with weights.
template <typename T, typename index_t>
struct StitchKernelArgs {
  const T* __restrict__ patches;    // (B, P, ph, pw, K)
  const double* __restrict__ positions;  // (B, P, 2)
  const T* __restrict__ weights;
  bool weights_per_patch;
  T* __restrict__ canvas;           // (B, H, W, K), zeroed
  T* __restrict__ weight_map;       // (B, H, W), zeroed
  index_t total;                    // threads: patch values (atomic) or canvas pixels (gather)
  index_t P, ph, pw, K, H, W;
};

// Adds the four bilinear shares of value v (patch pixel (i, j) of a patch based at
// (y0, x0)) into channel k of a (H, W, K) canvas, dropping pixels outside it. The shares
// are wy * (wx * v), grouped as in stitch_gather.
template <typename T>
__device__ __forceinline__ void scatter_value(T* img, int64_t H, int64_t W, int64_t K, int64_t k,
                                              int64_t r, int64_t c, const BilinearWeights<T>& w,
                                              T v) {
  const T cx[2] = {w.wx0 * v, w.wx1 * v};
  const T wy[2] = {w.wy0, w.wy1};
#pragma unroll
  for (int dy = 0; dy < 2; ++dy) {
    if (!in_range(r + dy, H)) continue;
#pragma unroll
    for (int dx = 0; dx < 2; ++dx) {
      if (!in_range(c + dx, W)) continue;
      atomicAdd(img + ((r + dy) * W + c + dx) * K + k, wy[dy] * cx[dx]);
    }
  }
}

// One thread per patch value (b, p, i, j, k).
template <typename T, typename index_t>
__global__ void stitch_atomic_kernel(const StitchKernelArgs<T, index_t> a) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  const index_t ph = a.ph, pw = a.pw, K = a.K, H = a.H, W = a.W;
  for (index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < a.total;
       idx += stride) {
    const PatchValueIndex<index_t> v = patch_value_index(idx, ph, pw, K);
    const int64_t bp = v.bp, b = v.bp / a.P;  // the division in index_t
    const auto s = patch_setup<T>(a.positions, bp, a.canvas, b, static_cast<int64_t>(H) * W * K);
    const T* patch = a.patches + bp * ph * pw * K;
    const int64_t r = s.y.base + v.i, c = s.x.base + v.j;
    if (a.weights == nullptr) {
      scatter_value(s.img, H, W, K, v.k, r, c, s.w, PatchReader<T>{patch, pw, K, v.k}(v.i, v.j));
      continue;
    }
    const T* wpatch = a.weights + (a.weights_per_patch ? bp * ph * pw : 0);
    scatter_value(s.img, H, W, K, v.k, r, c, s.w,
                  WeightedPatchReader<T>{patch, wpatch, pw, K, v.k}(v.i, v.j));
    if (v.k == 0) {
      scatter_value(a.weight_map + b * H * W, H, W, int64_t{1}, int64_t{0}, r, c, s.w,
                    WeightReader<T>{wpatch, pw}(v.i, v.j));
    }
  }
}

// One thread per canvas pixel (b, r, c): all K channels and the weight map, each summed
// over the patches in index order, exactly as the CPU kernel sums them.
template <typename T, typename index_t>
__global__ void stitch_gather_kernel(const StitchKernelArgs<T, index_t> a) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  const index_t P = a.P, ph = a.ph, pw = a.pw, K = a.K, H = a.H, W = a.W;
  const T* __restrict__ weights = a.weights;
  for (index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < a.total;
       idx += stride) {
    const index_t c = idx % W;
    const index_t r = (idx / W) % H;
    const int64_t b = idx / (W * H);
    // K is 1 (real) or 2 (complex); the sums stay in registers, starting from 0 as the
    // CPU kernel's zeroed canvas does.
    T acc[2] = {T(0), T(0)};
    T wacc = T(0);
    for (index_t p = 0; p < P; ++p) {
      const int64_t bp = b * P + p;
      // No image: this thread writes its own pixel, after the loop.
      const auto s = patch_setup<T>(a.positions, bp);
      // A patch touches canvas rows base_y .. base_y + ph and columns base_x .. base_x + pw.
      if (r < s.y.base || r > s.y.base + ph || c < s.x.base || c > s.x.base + pw) continue;
      const T* patch = a.patches + bp * ph * pw * K;
      const int64_t i = r - s.y.base, j = c - s.x.base;
      if (weights == nullptr) {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          if (k < K) acc[k] += stitch_gather<T>(PatchReader<T>{patch, pw, K, k}, ph, pw, i, j, s.w);
        }
        continue;
      }
      const T* wpatch = weights + (a.weights_per_patch ? bp * ph * pw : 0);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (k < K) {
          acc[k] += stitch_gather<T>(WeightedPatchReader<T>{patch, wpatch, pw, K, k}, ph, pw, i,
                                     j, s.w);
        }
      }
      wacc += stitch_gather<T>(WeightReader<T>{wpatch, pw}, ph, pw, i, j, s.w);
    }
    T* out = a.canvas + static_cast<int64_t>(idx) * K;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (k < K) out[k] = acc[k];
    }
    if (weights != nullptr) a.weight_map[idx] = wacc;
  }
}

template <typename T, typename index_t>
void launch_stitch(const StitchArgs& a, at::Tensor& canvas, at::Tensor& weight_map,
                   int64_t height, int64_t width, bool deterministic, cudaStream_t stream) {
  const bool weighted = a.weights.defined();
  const int64_t total = deterministic ? a.B * height * width : a.data.numel();
  const StitchKernelArgs<T, index_t> k{
      a.data.const_data_ptr<T>(), a.positions.const_data_ptr<double>(),
      weighted ? a.weights.const_data_ptr<T>() : nullptr, a.weights_per_patch,
      canvas.mutable_data_ptr<T>(), weighted ? weight_map.mutable_data_ptr<T>() : nullptr,
      static_cast<index_t>(total), static_cast<index_t>(a.P), static_cast<index_t>(a.ph),
      static_cast<index_t>(a.pw), static_cast<index_t>(a.K), static_cast<index_t>(height),
      static_cast<index_t>(width)};
  auto kernel = deterministic ? stitch_gather_kernel<T, index_t> : stitch_atomic_kernel<T, index_t>;
  kernel<<<blocks_for(total), kThreads, 0, stream>>>(k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Adds the checked patches (and weights) into the zeroed kernel-layout results.
void stitch_into(const StitchArgs& a, at::Tensor& canvas, at::Tensor& weight_map,
                 int64_t height, int64_t width) {
  // No finiteness check here: it would synchronise; ops.py checks CUDA positions.
  const at::Tensor& q = a.data;
  // Nothing lands on an empty canvas, and no patch value means nothing to add.
  if (canvas.numel() == 0 || q.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Every index the kernels form (flat thread index, canvas and patch offsets) stays
  // below the larger element count.
  const bool small = fits_int32(std::max<int64_t>(canvas.numel(), q.numel()));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "stitch_patches_cuda", [&] {
    if (small) {
      launch_stitch<scalar_t, int32_t>(a, canvas, weight_map, height, width, deterministic,
                                       stream);
    } else {
      launch_stitch<scalar_t, int64_t>(a, canvas, weight_map, height, width, deterministic,
                                       stream);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CUDA, m) { m.impl("stitch_patches", &stitch_patches_with<stitch_into>); }

}  // namespace ptycho_fast
