// CPU kernel of stitch_patches (the adjoint of extract_patches), optionally weighted.
//
// Determinism: the canvas is cut into bands of rows; each task owns whole bands and
// gathers, for each of its pixels, the contributions of the patches in index order
// (stitch_gather). No two tasks write one pixel and the order of the additions into a
// pixel does not depend on the split, so results are bitwise identical for any number
// of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>

#include "../common/bilinear.h"
#include "../common/tensor_args.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

constexpr int64_t kBandRows = 16;

// Adds one patch into the canvas rows [row_lo, row_hi) it covers.
template <typename T, typename Read>
inline void gather_patch_into_rows(const Read& read, T* canvas, int64_t W, int64_t K, int64_t k,
                                   int64_t ph, int64_t pw, const AxisSplit& sy,
                                   const AxisSplit& sx, const BilinearWeights<T>& w,
                                   int64_t row_lo, int64_t row_hi) {
  const int64_t c_lo = std::max<int64_t>(0, sx.base);
  const int64_t c_hi = std::min<int64_t>(W, sx.base + pw + 1);
  for (int64_t r = row_lo; r < row_hi; ++r) {
    T* row = canvas + r * W * K;
    for (int64_t c = c_lo; c < c_hi; ++c) {
      row[c * K + k] += stitch_gather<T>(read, ph, pw, r - sy.base, c - sx.base, w);
    }
  }
}

template <typename T>
void stitch_kernel(const T* patches, const double* positions, const T* weights,
                   bool weights_per_patch, T* canvas, T* weight_map, int64_t B, int64_t P,
                   int64_t ph, int64_t pw, int64_t K, int64_t H, int64_t W) {
  const int64_t bands = (H + kBandRows - 1) / kBandRows;
  at::parallel_for(0, B * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands;
      const int64_t band_lo = (task % bands) * kBandRows;
      const int64_t band_hi = std::min<int64_t>(H, band_lo + kBandRows);
      T* img = canvas + b * H * W * K;
      T* wimg = weight_map ? weight_map + b * H * W : nullptr;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t bp = b * P + p;
        const AxisSplit sy = split_coordinate(positions[2 * bp]);
        const AxisSplit sx = split_coordinate(positions[2 * bp + 1]);
        // A patch touches canvas rows base .. base + ph (the last through wy1).
        const int64_t row_lo = std::max<int64_t>(band_lo, sy.base);
        const int64_t row_hi = std::min<int64_t>(band_hi, sy.base + ph + 1);
        if (row_lo >= row_hi) continue;
        const BilinearWeights<T> w = bilinear_weights<T>(sy.frac, sx.frac);
        const T* patch = patches + bp * ph * pw * K;
        if (weights == nullptr) {
          for (int64_t k = 0; k < K; ++k) {
            gather_patch_into_rows(PatchReader<T>{patch, pw, K, k}, img, W, K, k, ph, pw, sy, sx,
                                   w, row_lo, row_hi);
          }
          continue;
        }
        const T* wpatch = weights + (weights_per_patch ? bp * ph * pw : 0);
        for (int64_t k = 0; k < K; ++k) {
          gather_patch_into_rows(WeightedPatchReader<T>{patch, wpatch, pw, K, k}, img, W, K, k,
                                 ph, pw, sy, sx, w, row_lo, row_hi);
        }
        gather_patch_into_rows(WeightReader<T>{wpatch, pw}, wimg, W, 1, 0, ph, pw, sy, sx, w,
                               row_lo, row_hi);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> stitch_patches_cpu(const at::Tensor& patches,
                                                      const at::Tensor& positions,
                                                      int64_t height, int64_t width,
                                                      const std::optional<at::Tensor>& weights) {
  StitchArgs a = stitch_args(patches, positions, height, width, weights);
  check_finite_positions("stitch_patches", a.positions);
  const at::Tensor& q = a.patches;
  const at::Tensor& w = a.weights;
  at::Tensor canvas = at::zeros({a.B, height, width, a.K}, q.options());
  at::Tensor weight_map = at::zeros({w.defined() ? a.B * height * width : 0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "stitch_patches_cpu", [&] {
    stitch_kernel<scalar_t>(q.data_ptr<scalar_t>(), a.positions.data_ptr<double>(),
                            w.defined() ? w.data_ptr<scalar_t>() : nullptr, a.weights_per_patch,
                            canvas.data_ptr<scalar_t>(),
                            w.defined() ? weight_map.data_ptr<scalar_t>() : nullptr, a.B, a.P,
                            a.ph, a.pw, a.K, height, width);
  });
  return stitch_outputs(a, canvas, weight_map, height, width);
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) { m.impl("stitch_patches", &stitch_patches_cpu); }

}  // namespace ptycho_fast
