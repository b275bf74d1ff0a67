// CUDA kernel of extract_patches: one thread per output value (b, p, i, j, k), reading
// the four canvas corners with zero padding (common/bilinear.h, the CPU's arithmetic).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/bilinear.h"
#include "../common/extract_host.h"
#include "launch.h"

namespace ptycho_fast {
namespace {

// index_t: int32 when every flat index fits (divisions are several times cheaper),
// int64 otherwise; memory offsets are always computed in int64.
template <typename T, typename index_t>
__global__ void extract_kernel(const T* __restrict__ canvas, const double* __restrict__ positions,
                               T* __restrict__ out, index_t total, index_t H, index_t W,
                               index_t K, index_t P, index_t ph, index_t pw) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const PatchValueIndex<index_t> v = patch_value_index(idx, ph, pw, K);
    const auto s = patch_setup<T>(positions, v.bp, canvas, v.bp / P, static_cast<int64_t>(H) * W * K);
    const Corners<T> c = canvas_corners<T>(s.img, H, W, K, s.y.base + v.i, s.x.base + v.j, v.k);
    out[idx] = bilinear_interp(c.v00, c.v01, c.v10, c.v11, s.w);
  }
}

template <typename T, typename index_t>
void launch_extract(const SamplingArgs& a, at::Tensor& out, int64_t ph, int64_t pw,
                    cudaStream_t stream) {
  const int64_t total = out.numel();
  extract_kernel<T, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
      a.data.const_data_ptr<T>(), a.positions.const_data_ptr<double>(),
      out.mutable_data_ptr<T>(), static_cast<index_t>(total), static_cast<index_t>(a.H),
      static_cast<index_t>(a.W), static_cast<index_t>(a.K), static_cast<index_t>(a.P),
      static_cast<index_t>(ph), static_cast<index_t>(pw));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Fills buf ((B, P, h, w, K) real, contiguous) from the checked arguments.
void extract_into(const SamplingArgs& a, at::Tensor& buf, int64_t patch_h, int64_t patch_w) {
  // No finiteness check here: it would synchronise; ops.py checks CUDA positions.
  if (buf.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(a.data.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Every index the kernel forms (flat output index, canvas offsets) stays below the
  // larger element count.
  const bool small = fits_int32(std::max<int64_t>(buf.numel(), a.data.numel()));
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "extract_patches_cuda", [&] {
    if (small) {
      launch_extract<scalar_t, int32_t>(a, buf, patch_h, patch_w, stream);
    } else {
      launch_extract<scalar_t, int64_t>(a, buf, patch_h, patch_w, stream);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CUDA, m) {
  m.impl("extract_patches", &extract_patches_with<extract_into>);
  m.impl("extract_patches_into", &extract_patches_into_with<extract_into>);
}

}  // namespace ptycho_fast
