// CUDA kernel of patch_stats: one block per patch. Each thread runs welford_update over
// a strided share of the patch in double, then the block combines the partial states
// with welford_combine (Chan et al.) in one block reduction (block_reduce.cuh). NaN
// propagates as in common/welford.h.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/stats_host.h"
#include "../common/stats_view.h"
#include "../common/welford.h"
#include "block_reduce.cuh"
#include "launch.h"

namespace ptycho_fast {
namespace {

// The block_reduce operations of a WelfordState.
struct WelfordOps {
  __device__ __forceinline__ WelfordState identity() const { return welford_empty(); }
  __device__ __forceinline__ WelfordState combine(const WelfordState& a, const WelfordState& b) const {
    return welford_combine(a, b);
  }
  __device__ __forceinline__ WelfordState shfl_down(const WelfordState& s, int offset) const {
    constexpr unsigned kAll = 0xffffffffu;
    WelfordState r;
    r.mean = __shfl_down_sync(kAll, s.mean, offset);
    r.m2 = __shfl_down_sync(kAll, s.m2, offset);
    r.min = __shfl_down_sync(kAll, s.min, offset);
    r.max = __shfl_down_sync(kAll, s.max, offset);
    r.n = static_cast<int64_t>(__shfl_down_sync(kAll, static_cast<long long>(s.n), offset));
    return r;
  }
};

// blockDim.x is a multiple of 32 (at most kThreads); blocks stride over the M patches.
template <typename T>
__global__ void patch_stats_kernel(const T* __restrict__ data, int64_t M, int64_t n, int64_t K,
                                   StatsView view, double* __restrict__ out_mean,
                                   double* __restrict__ out_var, double* __restrict__ out_min,
                                   double* __restrict__ out_max) {
  __shared__ WelfordState shared[kThreads / kWarp];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* x = data + m * n * K;
    WelfordState s = welford_empty();
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      const T* e = x + t * K;
      welford_update(s, view_scalar(static_cast<double>(e[0]),
                                    K == 2 ? static_cast<double>(e[1]) : 0.0, view));
    }
    s = block_reduce(s, WelfordOps{}, shared);
    if (threadIdx.x == 0) welford_store(s, m, out_mean, out_var, out_min, out_max);
    __syncthreads();  // the shared states are rewritten for the next patch
  }
}

// Writes the four (M) float64 results from the checked arguments.
void stats_into(const StatsArgs& a, at::Tensor& mean, at::Tensor& var, at::Tensor& mn,
                at::Tensor& mx) {
  if (a.M == 0) return;
  const c10::cuda::CUDAGuard guard(a.data.device());
  const int threads = warp_threads_for(a.n);
  const unsigned blocks = blocks_per_item(a.M);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "patch_stats_cuda", [&] {
    patch_stats_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        a.data.const_data_ptr<scalar_t>(), a.M, a.n, a.K, a.view, mean.mutable_data_ptr<double>(),
        var.mutable_data_ptr<double>(), mn.mutable_data_ptr<double>(),
        mx.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CUDA, m) { m.impl("patch_stats", &patch_stats_with<stats_into>); }

}  // namespace ptycho_fast
