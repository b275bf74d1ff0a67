// The host side of patch_stats, shared by the CPU and CUDA files: the checks and the view,
// the patches as (M, n, K) real contiguous, and the outputs (shape patches.shape[:-2],
// the patches' real dtype), around a device's
//   void fill(const StatsArgs& a, at::Tensor& mean, at::Tensor& var, at::Tensor& mn,
//             at::Tensor& mx)
// that writes the four (M) float64 results. The device files register
//   m.impl("patch_stats", &patch_stats_with<stats_into>);
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "kernel_layout.h"
#include "stats_view.h"

namespace ptycho_fast {

// Everything a statistics launcher needs: the patches as (M, n, K) real contiguous.
struct StatsArgs {
  at::Tensor data;
  std::vector<int64_t> leading_shape;  // the output shape: patches.shape[:-2]
  StatsView view;
  int64_t M, n, K;
};

inline StatsView parse_stats_view(c10::string_view name, bool complex) {
  const char* op = "patch_stats";
  if (name == "auto") return complex ? StatsView::Abs : StatsView::Value;
  if (name == "amplitude") return StatsView::Abs;
  if (name == "value" || name == "real") {
    TORCH_CHECK_VALUE(!(complex && name == "value"), op,
                      ": view 'value' needs real patches; for complex patches use one of "
                      "amplitude, real, imag, phase");
    return complex ? StatsView::Real : StatsView::Value;
  }
  if (name == "imag" || name == "phase") {
    TORCH_CHECK_VALUE(complex, op, ": view '", name,
                      "' needs complex patches; for real patches use value or amplitude");
    return name == "imag" ? StatsView::Imag : StatsView::Phase;
  }
  TORCH_CHECK_VALUE(false, op, ": view must be one of auto, value, amplitude, real, imag, phase; got '",
                    name, "'");
  return StatsView::Value;
}

inline StatsArgs stats_args(const at::Tensor& patches, c10::string_view view) {
  const char* op = "patch_stats";
  check_data_tensor(op, "patches", patches);
  TORCH_CHECK_VALUE(patches.dim() >= 2, op, ": patches must have shape (..., h, w), got ",
                    patches.sizes());
  StatsArgs a;
  a.view = parse_stats_view(view, patches.is_complex());
  a.leading_shape.assign(patches.sizes().begin(), patches.sizes().end() - 2);
  a.n = patches.size(-2) * patches.size(-1);
  a.M = 1;
  for (int64_t s : a.leading_shape) a.M *= s;
  a.data = as_real_channels(patches);
  a.K = a.data.size(-1);
  a.data = a.data.reshape({a.M, a.n, a.K});
  return a;
}

template <auto fill>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_stats_with(
    const at::Tensor& patches, c10::string_view view) {
  const StatsArgs a = stats_args(patches, view);
  const auto opts = a.data.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({a.M}, opts), var = at::empty({a.M}, opts);
  at::Tensor mn = at::empty({a.M}, opts), mx = at::empty({a.M}, opts);
  fill(a, mean, var, mn, mx);
  // float64 (M) -> patches.shape[:-2] in the real dtype of the patches.
  const auto finish = [&](const at::Tensor& t) {
    return t.to(a.data.scalar_type()).view(a.leading_shape);
  };
  return {finish(mean), finish(var), finish(mn), finish(mx)};
}

}  // namespace ptycho_fast
