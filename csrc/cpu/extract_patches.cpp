// CPU kernel of extract_patches: one task per patch, bilinear reads from the canvas.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/bilinear.h"
#include "../common/checks.h"
#include "../common/extract_host.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

template <typename T>
void extract_kernel(const T* canvas, const double* positions, T* out, int64_t B, int64_t H,
                    int64_t W, int64_t K, int64_t P, int64_t ph, int64_t pw) {
  const int64_t row_len = pw * K;
  at::parallel_for(0, B * P, grain_for(ph * row_len), [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const auto s = patch_setup<T>(positions, bp, canvas, bp / P, H * W * K);
      T* patch = out + bp * ph * row_len;
      const bool interior = s.y.base >= 0 && s.y.base + ph < H && s.x.base >= 0 && s.x.base + pw < W;
      if (interior) {
        // All four corners of every pixel are inside: contiguous rows, no bounds tests,
        // and one canvas row pair per patch row (vectorises).
        for (int64_t i = 0; i < ph; ++i) {
          const T* __restrict r0 = s.img + ((s.y.base + i) * W + s.x.base) * K;
          const T* __restrict r1 = r0 + W * K;
          T* __restrict o = patch + i * row_len;
          for (int64_t m = 0; m < row_len; ++m) {
            o[m] = bilinear_interp(r0[m], r0[m + K], r1[m], r1[m + K], s.w);
          }
        }
      } else {
        for_each_patch_value(s, H, W, K, ph, pw, [&](int64_t v, const Corners<T>& c) {
          patch[v] = bilinear_interp(c.v00, c.v01, c.v10, c.v11, s.w);
        });
      }
    }
  });
}

// Fills buf ((B, P, h, w, K) real, contiguous) from the checked arguments.
void extract_into(const SamplingArgs& a, at::Tensor& buf, int64_t patch_h, int64_t patch_w) {
  check_finite_positions("extract_patches", a.positions);
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "extract_patches_cpu", [&] {
    extract_kernel<scalar_t>(a.data.const_data_ptr<scalar_t>(),
                             a.positions.const_data_ptr<double>(),
                             buf.mutable_data_ptr<scalar_t>(), a.B, a.H, a.W, a.K, a.P, patch_h,
                             patch_w);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) {
  m.impl("extract_patches", &extract_patches_with<extract_into>);
  m.impl("extract_patches_into", &extract_patches_into_with<extract_into>);
}

}  // namespace ptycho_fast
