// CUDA kernel of patch_stats: one block per patch. Each thread runs welford_update over
// a strided share of the patch in double, then the block combines the partial states
// with welford_combine (Chan et al.): warp shuffles, then one state per warp through
// shared memory. NaN propagates as in common/welford.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/tensor_args.h"
#include "../common/welford.h"
#include "launch.h"

namespace ptycho_fast {
namespace {

__device__ __forceinline__ WelfordState shfl_down(const WelfordState& s, int offset) {
  constexpr unsigned kAll = 0xffffffffu;
  WelfordState r;
  r.mean = __shfl_down_sync(kAll, s.mean, offset);
  r.m2 = __shfl_down_sync(kAll, s.m2, offset);
  r.min = __shfl_down_sync(kAll, s.min, offset);
  r.max = __shfl_down_sync(kAll, s.max, offset);
  r.n = static_cast<int64_t>(__shfl_down_sync(kAll, static_cast<long long>(s.n), offset));
  return r;
}

__device__ __forceinline__ WelfordState warp_combine(WelfordState s) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) s = welford_combine(s, shfl_down(s, offset));
  return s;
}

// blockDim.x is a multiple of 32 (at most kThreads); blocks stride over the M patches.
template <typename T>
__global__ void patch_stats_kernel(const T* __restrict__ data, int64_t M, int64_t n, int64_t K,
                                   StatsView view, double* __restrict__ out_mean,
                                   double* __restrict__ out_var, double* __restrict__ out_min,
                                   double* __restrict__ out_max) {
  __shared__ WelfordState shared[kThreads / kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* x = data + m * n * K;
    WelfordState s = welford_empty();
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      const T* e = x + t * K;
      welford_update(s, view_scalar(static_cast<double>(e[0]),
                                    K == 2 ? static_cast<double>(e[1]) : 0.0, view));
    }
    s = warp_combine(s);
    if (lane == 0) shared[warp] = s;
    __syncthreads();
    if (warp == 0) {
      const int warps = blockDim.x / kWarp;
      s = lane < warps ? shared[lane] : welford_empty();
      s = warp_combine(s);
      if (lane == 0) {
        out_mean[m] = welford_mean(s);
        out_var[m] = welford_variance(s);
        out_min[m] = s.n > 0 ? s.min : NAN;
        out_max[m] = s.n > 0 ? s.max : NAN;
      }
    }
    __syncthreads();  // the shared states are rewritten for the next patch
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_stats_cuda(
    const at::Tensor& patches, c10::string_view view) {
  const StatsArgs a = stats_args(patches, view);
  const c10::cuda::CUDAGuard guard(a.data.device());
  const auto opts = a.data.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({a.M}, opts), var = at::empty({a.M}, opts);
  at::Tensor mn = at::empty({a.M}, opts), mx = at::empty({a.M}, opts);
  if (a.M > 0) {
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
  return stats_outputs(a, mean, var, mn, mx);
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CUDA, m) { m.impl("patch_stats", &patch_stats_cuda); }

}  // namespace ptycho_fast
