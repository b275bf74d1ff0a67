// The block reduction of the kernels in which one block owns one item (a patch:
// patch_stats, _position_grad): every thread holds a partial value; each warp combines
// its lanes with shuffles, then one value per warp goes through shared memory to warp 0,
// which combines those the same way. Ops (as ATen's reduction ops) supplies
//   T identity() const;                      the empty partial
//   T combine(const T& a, const T& b) const;
//   T shfl_down(const T& v, int offset) const;  __shfl_down_sync of a whole value
#pragma once

#include "launch.h"

namespace ptycho_fast {

template <typename T, typename Ops>
__device__ __forceinline__ T warp_reduce(T v, const Ops& ops) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = ops.combine(v, ops.shfl_down(v, offset));
  return v;
}

// The combination of v over the block, valid in thread 0. Every thread of the block must
// call it; blockDim.x is a multiple of kWarp (at most kThreads). `shared` holds one value
// per warp (kThreads / kWarp) and may be rewritten after the next __syncthreads().
template <typename T, typename Ops>
__device__ __forceinline__ T block_reduce(T v, const Ops& ops, T* shared) {
  v = warp_reduce(v, ops);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / kWarp;
    v = lane < warps ? shared[lane] : ops.identity();
    v = warp_reduce(v, ops);
  }
  return v;
}

// A sum of doubles.
struct SumOps {
  __device__ __forceinline__ double identity() const { return 0.0; }
  __device__ __forceinline__ double combine(const double& a, const double& b) const { return a + b; }
  __device__ __forceinline__ double shfl_down(const double& v, int offset) const {
    return __shfl_down_sync(0xffffffffu, v, offset);
  }
};

}  // namespace ptycho_fast
