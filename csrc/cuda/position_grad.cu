// CUDA kernel of position_grad: one block per patch; its threads share the patch's
// values, each summing bilinear_interp_grad products in double, then one block reduction
// gives the patch's (d/drow, d/dcol).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/bilinear.h"
#include "../common/tensor_args.h"
#include "launch.h"

namespace ptycho_fast {
namespace {

// Sum of v over the block, valid in thread 0. Every thread of the block must call it;
// `shared` holds one value per warp and may be reused after the next __syncthreads().
__device__ __forceinline__ double block_sum(double v, double* shared) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / kWarp;
    v = lane < warps ? shared[lane] : 0.0;
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffffu, v, offset);
    }
  }
  return v;
}

// blockDim.x is a multiple of 32 (at most kThreads); blocks stride over the B*P patches.
template <typename T>
__global__ void position_grad_kernel(const T* __restrict__ canvas,
                                     const double* __restrict__ positions,
                                     const T* __restrict__ grad, double* __restrict__ out,
                                     int64_t BP, int64_t H, int64_t W, int64_t K, int64_t P,
                                     int64_t ph, int64_t pw) {
  __shared__ double shared_y[kThreads / kWarp];
  __shared__ double shared_x[kThreads / kWarp];
  const int64_t n = ph * pw;
  for (int64_t bp = blockIdx.x; bp < BP; bp += gridDim.x) {
    const T* img = canvas + (bp / P) * H * W * K;
    const AxisSplit sy = split_coordinate(positions[2 * bp]);
    const AxisSplit sx = split_coordinate(positions[2 * bp + 1]);
    const BilinearWeights<T> w = bilinear_weights<T>(sy.frac, sx.frac);
    const T* g = grad + bp * n * K;
    // Sums in double: a patch adds up ph*pw*K products of either sign.
    double gy = 0.0, gx = 0.0;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      const int64_t i = t / pw, j = t - (t / pw) * pw;
      for (int64_t k = 0; k < K; ++k) {
        const Corners<T> c = canvas_corners<T>(img, H, W, K, sy.base + i, sx.base + j, k);
        T dy, dx;
        bilinear_interp_grad(c.v00, c.v01, c.v10, c.v11, w, &dy, &dx);
        const T gv = g[t * K + k];
        gy += static_cast<double>(gv * dy);
        gx += static_cast<double>(gv * dx);
      }
    }
    gy = block_sum(gy, shared_y);
    gx = block_sum(gx, shared_x);
    if (threadIdx.x == 0) {
      out[2 * bp] = gy;
      out[2 * bp + 1] = gx;
    }
    __syncthreads();  // the shared slots are rewritten for the next patch
  }
}

at::Tensor position_grad_cuda(const at::Tensor& canvas, const at::Tensor& positions,
                              const at::Tensor& grad_patches) {
  // No finiteness check here: it would synchronise; ops.py checks CUDA positions.
  const SamplingArgs a = sampling_args("position_grad", canvas, positions);
  const at::Tensor g = position_grad_patches(a, canvas, grad_patches);
  const c10::cuda::CUDAGuard guard(a.canvas.device());
  at::Tensor out = at::empty({a.B, a.P, 2}, a.positions.options());
  const int64_t BP = a.B * a.P;
  if (BP > 0) {
    const int64_t ph = g.size(2), pw = g.size(3);
    const int threads = warp_threads_for(ph * pw);
    const unsigned blocks = blocks_per_item(BP);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(a.canvas.scalar_type(), "position_grad_cuda", [&] {
      position_grad_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          a.canvas.const_data_ptr<scalar_t>(), a.positions.const_data_ptr<double>(),
          g.const_data_ptr<scalar_t>(), out.mutable_data_ptr<double>(), BP, a.H, a.W, a.K, a.P,
          ph, pw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return unbatched(out.to(positions.scalar_type()), a.is_batched);
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CUDA, m) { m.impl("position_grad", &position_grad_cuda); }

}  // namespace ptycho_fast
