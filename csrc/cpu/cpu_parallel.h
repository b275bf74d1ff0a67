// Work splitting for the CPU kernels (at::parallel_for, OpenMP backend).
#pragma once

#include <algorithm>
#include <cstdint>

namespace ptycho_fast {

// Items per parallel task: enough work (~32k values) to amortise scheduling. The split
// never changes results: every kernel's per-output arithmetic is independent of it.
inline int64_t grain_for(int64_t values_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, values_per_item));
}

}  // namespace ptycho_fast
