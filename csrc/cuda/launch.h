// Launch geometry and index helpers shared by the CUDA kernels (device-side only; the
// per-element arithmetic shared with the CPU lives in ../common).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace ptycho_fast {

// Threads per block of the grid-stride kernels, and the most threads of a block that
// owns one patch (patch_stats, _position_grad).
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Grid-stride loops cover any size; more blocks than this only adds scheduling.
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// Blocks of kThreads for a grid-stride loop over n items.
inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// One block per item (a patch), at most kMaxBlocks (the kernel strides over the rest).
inline unsigned blocks_per_item(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(n, kMaxBlocks));
}

// Threads of a block that reduces `values` values: one warp per 32 values, at most
// kThreads, so small patches waste no lanes; at least one warp (an empty patch still
// gets its NaN statistics).
inline int warp_threads_for(int64_t values) {
  const int64_t v = std::max<int64_t>(values, 1);
  return static_cast<int>(std::min<int64_t>(kThreads, (v + kWarp - 1) / kWarp * kWarp));
}

// int32 indices when every flat index the kernels form (at most `largest`, the biggest
// element count involved) fits: integer division is several times cheaper than in int64.
inline bool fits_int32(int64_t largest) {
  return largest < std::numeric_limits<int32_t>::max() / 2;
}

// A flat index into (B*P, ph, pw, K) patch values, split into its coordinates.
template <typename index_t>
struct PatchValueIndex {
  index_t bp, i, j, k;
};

template <typename index_t>
__device__ __forceinline__ PatchValueIndex<index_t> patch_value_index(index_t idx, index_t ph,
                                                                      index_t pw, index_t K) {
  PatchValueIndex<index_t> v;
  v.k = idx % K;
  idx /= K;
  v.j = idx % pw;
  idx /= pw;
  v.i = idx % ph;
  v.bp = idx / ph;
  return v;
}

}  // namespace ptycho_fast
