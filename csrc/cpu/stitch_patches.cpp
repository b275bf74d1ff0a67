// CPU kernel of stitch_patches (the adjoint of extract_patches), optionally weighted.
//
// Determinism: the canvas is cut into bands of rows; each task owns whole bands (a run of
// consecutive ones) and gathers, for each of its pixels, the contributions of the
// patches in index order (stitch_gather). No two tasks write one pixel and the order of
// the additions into a pixel does not depend on the split, so results are bitwise
// identical for any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/bilinear.h"
#include "../common/checks.h"
#include "../common/stitch_host.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

constexpr int64_t kBandRows = 16;

// One patch row, (optionally) weighted, with a zero pixel on each side, so that every
// canvas column of the patch window reads its two patch columns without a bounds test.
// A row outside the patch is all zeros.
template <typename T>
inline void load_padded_row(T* padded, const T* patch, const T* weight, int64_t i, int64_t ph,
                            int64_t pw, int64_t K) {
  std::fill(padded, padded + K, T(0));
  std::fill(padded + (pw + 1) * K, padded + (pw + 2) * K, T(0));
  T* dst = padded + K;
  if (!in_range(i, ph)) {
    std::fill(dst, dst + pw * K, T(0));
    return;
  }
  const T* src = patch + i * pw * K;
  if (weight == nullptr) {
    std::copy(src, src + pw * K, dst);
    return;
  }
  const T* wrow = weight + i * pw;
  for (int64_t j = 0; j < pw; ++j) {
    for (int64_t k = 0; k < K; ++k) dst[j * K + k] = wrow[j] * src[j * K + k];
  }
}

// Adds one patch (ph x pw x K; weighted when weight != nullptr) into canvas rows
// [row_lo, row_hi): canvas row base_y + i gathers padded patch rows i and i - 1
// (stitch_combine, the arithmetic every stitch kernel shares), vectorised along rows.
template <typename T>
void add_patch_rows(T* canvas, int64_t W, int64_t K, const T* patch, const T* weight, int64_t ph,
                    int64_t pw, const AxisSplit& sy, const AxisSplit& sx,
                    const BilinearWeights<T>& w, int64_t row_lo, int64_t row_hi, T* row_buf,
                    T* up_buf) {
  // Canvas columns base_x .. base_x + pw, clipped to the canvas; m indexes (col, k).
  const int64_t c_lo = std::max<int64_t>(0, sx.base), c_hi = std::min<int64_t>(W, sx.base + pw + 1);
  if (c_lo >= c_hi) return;
  const int64_t m_lo = (c_lo - sx.base) * K, m_hi = (c_hi - sx.base) * K;
  load_padded_row(up_buf, patch, weight, row_lo - sy.base - 1, ph, pw, K);
  for (int64_t r = row_lo; r < row_hi; ++r) {
    load_padded_row(row_buf, patch, weight, r - sy.base, ph, pw, K);
    T* __restrict out = canvas + (r * W + sx.base) * K;
    const T* __restrict here = row_buf + K;  // here[m - K] is the pixel to the left
    const T* __restrict up = up_buf + K;
    for (int64_t m = m_lo; m < m_hi; ++m) {
      out[m] += stitch_combine(here[m], here[m - K], up[m], up[m - K], w);
    }
    std::swap(row_buf, up_buf);
  }
}

template <typename T>
void stitch_kernel(const T* patches, const double* positions, const T* weights,
                   bool weights_per_patch, T* canvas, T* weight_map, int64_t B, int64_t P,
                   int64_t ph, int64_t pw, int64_t K, int64_t H, int64_t W) {
  const int64_t bands = (H + kBandRows - 1) / kBandRows;
  at::parallel_for(0, B * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buffers(4 * (pw + 2) * K);
    T* row_buf = buffers.data();
    T* up_buf = row_buf + (pw + 2) * K;
    T* wrow_buf = up_buf + (pw + 2) * K;
    T* wup_buf = wrow_buf + (pw + 2) * K;
    // The task's bands, one batch item at a time: rows [row_first, row_last) of item b.
    for (int64_t first = begin, last; first < end; first = last) {
      const int64_t b = first / bands;
      last = std::min<int64_t>(end, (b + 1) * bands);
      const int64_t row_first = (first - b * bands) * kBandRows;
      const int64_t row_last = std::min<int64_t>(H, (last - b * bands) * kBandRows);
      // Patches in index order, each into this task's rows only: the order of additions
      // into a pixel is the patch order, whatever the split into tasks.
      for (int64_t p = 0; p < P; ++p) {
        const int64_t bp = b * P + p;
        const auto s = patch_setup<T>(positions, bp, canvas, b, H * W * K);
        // A patch touches canvas rows base .. base + ph (the last through wy1).
        const int64_t row_lo = std::max<int64_t>(row_first, s.y.base);
        const int64_t row_hi = std::min<int64_t>(row_last, s.y.base + ph + 1);
        if (row_lo >= row_hi) continue;
        const T* patch = patches + bp * ph * pw * K;
        const T* wpatch =
            weights == nullptr ? nullptr : weights + (weights_per_patch ? bp * ph * pw : 0);
        add_patch_rows(s.img, W, K, patch, wpatch, ph, pw, s.y, s.x, s.w, row_lo, row_hi,
                       row_buf, up_buf);
        if (wpatch != nullptr) {
          add_patch_rows(weight_map + b * H * W, W, int64_t(1), wpatch, static_cast<const T*>(nullptr),
                         ph, pw, s.y, s.x, s.w, row_lo, row_hi, wrow_buf, wup_buf);
        }
      }
    }
  });
}

// Adds the checked patches (and weights) into the zeroed kernel-layout results.
void stitch_into(const StitchArgs& a, at::Tensor& canvas, at::Tensor& weight_map,
                 int64_t height, int64_t width) {
  check_finite_positions("stitch_patches", a.positions);
  const at::Tensor& q = a.data;
  const at::Tensor& w = a.weights;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "stitch_patches_cpu", [&] {
    stitch_kernel<scalar_t>(q.const_data_ptr<scalar_t>(), a.positions.const_data_ptr<double>(),
                            w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
                            a.weights_per_patch, canvas.mutable_data_ptr<scalar_t>(),
                            w.defined() ? weight_map.mutable_data_ptr<scalar_t>() : nullptr, a.B,
                            a.P, a.ph, a.pw, a.K, height, width);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) { m.impl("stitch_patches", &stitch_patches_with<stitch_into>); }

}  // namespace ptycho_fast
