// CPU kernel of extract_patches: one task per patch, bilinear reads from the canvas.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/bilinear.h"
#include "../common/tensor_args.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

template <typename T>
void extract_kernel(const T* canvas, const double* positions, T* out, int64_t B, int64_t H,
                    int64_t W, int64_t K, int64_t P, int64_t ph, int64_t pw) {
  const int64_t row_len = pw * K;
  at::parallel_for(0, B * P, grain_for(ph * row_len), [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const T* img = canvas + (bp / P) * H * W * K;
      const AxisSplit sy = split_coordinate(positions[2 * bp]);
      const AxisSplit sx = split_coordinate(positions[2 * bp + 1]);
      const BilinearWeights<T> w = bilinear_weights<T>(sy.frac, sx.frac);
      T* patch = out + bp * ph * row_len;
      const bool interior = sy.base >= 0 && sy.base + ph < H && sx.base >= 0 && sx.base + pw < W;
      if (interior) {
        // All four corners of every pixel are inside: contiguous rows, no bounds tests,
        // and one canvas row pair per patch row (vectorises).
        for (int64_t i = 0; i < ph; ++i) {
          const T* __restrict r0 = img + ((sy.base + i) * W + sx.base) * K;
          const T* __restrict r1 = r0 + W * K;
          T* __restrict o = patch + i * row_len;
          for (int64_t m = 0; m < row_len; ++m) {
            o[m] = bilinear_interp(r0[m], r0[m + K], r1[m], r1[m + K], w);
          }
        }
      } else {
        for (int64_t i = 0; i < ph; ++i) {
          for (int64_t j = 0; j < pw; ++j) {
            for (int64_t k = 0; k < K; ++k) {
              const Corners<T> c = canvas_corners(img, H, W, K, sy.base + i, sx.base + j, k);
              patch[(i * pw + j) * K + k] = bilinear_interp(c.v00, c.v01, c.v10, c.v11, w);
            }
          }
        }
      }
    }
  });
}

// Fills buf ((B, P, h, w, K) real, contiguous) from the checked arguments.
void extract_into(const SamplingArgs& a, at::Tensor& buf, int64_t patch_h, int64_t patch_w) {
  check_finite_positions("extract_patches", a.positions);
  AT_DISPATCH_FLOATING_TYPES(a.canvas.scalar_type(), "extract_patches_cpu", [&] {
    extract_kernel<scalar_t>(a.canvas.data_ptr<scalar_t>(), a.positions.data_ptr<double>(),
                             buf.data_ptr<scalar_t>(), a.B, a.H, a.W, a.K, a.P, patch_h,
                             patch_w);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) {
  m.impl("extract_patches", &extract_patches_with<extract_into>);
  m.impl("extract_patches_into", &extract_patches_into_with<extract_into>);
}

}  // namespace ptycho_fast
