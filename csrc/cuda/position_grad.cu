// CUDA kernel of _position_grad: one block per patch; its threads share the patch's
// values, each summing bilinear_interp_grad products in double, then one block reduction
// (block_reduce.cuh) gives the patch's (d/drow, d/dcol).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/bilinear.h"
#include "../common/position_grad_host.h"
#include "block_reduce.cuh"
#include "launch.h"

namespace ptycho_fast {
namespace {

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
    const auto s = patch_setup<T>(positions, bp, canvas, bp / P, H * W * K);
    const T* g = grad + bp * n * K;
    // Sums in double: a patch adds up ph*pw*K products of either sign.
    double gy = 0.0, gx = 0.0;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      const int64_t i = t / pw, j = t - (t / pw) * pw;
      for (int64_t k = 0; k < K; ++k) {
        const Corners<T> c = canvas_corners<T>(s.img, H, W, K, s.y.base + i, s.x.base + j, k);
        T dy, dx;
        bilinear_interp_grad(c.v00, c.v01, c.v10, c.v11, s.w, &dy, &dx);
        const T gv = g[t * K + k];
        gy += static_cast<double>(gv * dy);
        gx += static_cast<double>(gv * dx);
      }
    }
    gy = block_reduce(gy, SumOps{}, shared_y);
    gx = block_reduce(gx, SumOps{}, shared_x);
    if (threadIdx.x == 0) {
      out[2 * bp] = gy;
      out[2 * bp + 1] = gx;
    }
    __syncthreads();  // the shared slots are rewritten for the next patch
  }
}

// Writes out ((B, P, 2) float64) from the checked arguments; grad is (B, P, h, w, K).
void position_grad_into(const SamplingArgs& a, const at::Tensor& grad, at::Tensor& out) {
  // No finiteness check here: it would synchronise; ops.py checks CUDA positions.
  const int64_t BP = a.B * a.P;
  if (BP == 0) return;
  const c10::cuda::CUDAGuard guard(a.data.device());
  const int64_t ph = grad.size(2), pw = grad.size(3);
  const int threads = warp_threads_for(ph * pw);
  const unsigned blocks = blocks_per_item(BP);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "_position_grad_cuda", [&] {
    position_grad_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        a.data.const_data_ptr<scalar_t>(), a.positions.const_data_ptr<double>(),
        grad.const_data_ptr<scalar_t>(), out.mutable_data_ptr<double>(), BP, a.H, a.W, a.K, a.P,
        ph, pw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CUDA, m) {
  m.impl("_position_grad", &position_grad_with<position_grad_into>);
}

}  // namespace ptycho_fast
