// Host-side argument checks and layout helpers shared by the CPU and CUDA launchers.
// Every kernel works on real tensors with an explicit channel axis K (1 for real data,
// 2 for complex data seen through view_as_real), batched, contiguous; these helpers
// bring any accepted input to that form and give errors that name the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/view_as_complex.h>
#include <ATen/ops/view_as_real.h>
#include <c10/util/Exception.h>

#include "welford.h"


#include <optional>
#include <vector>
#include <tuple>

namespace ptycho_fast {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kComplexFloat ||
         t == at::kComplexDouble;
}

inline void check_data_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is missing");
  TORCH_CHECK_VALUE(is_supported_dtype(t.scalar_type()), op, ": ", name,
                    " must be float32, float64, complex64 or complex128, got ",
                    t.scalar_type());
}

// positions: (P, 2) when unbatched, (B, P, 2) when batched; floating point.
inline void check_positions(const char* op, const at::Tensor& positions, bool batched,
                            int64_t batch) {
  TORCH_CHECK_VALUE(positions.defined(), op, ": positions is missing");
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
                    op, ": positions must be float32 or float64 (row, col) pixel coordinates, got ",
                    positions.scalar_type());
  const int64_t want_dim = batched ? 3 : 2;
  TORCH_CHECK_VALUE(positions.dim() == want_dim && positions.size(-1) == 2, op,
                    ": positions must have shape ", batched ? "(B, P, 2)" : "(P, 2)",
                    " to match the ", batched ? "batched" : "unbatched", " data, got ",
                    positions.sizes());
  if (batched) {
    TORCH_CHECK_VALUE(positions.size(0) == batch, op, ": positions has batch size ",
                      positions.size(0), " but the data has batch size ", batch);
  }
}

inline void check_same_device(const char* op, const char* a_name, const at::Tensor& a,
                              const char* b_name, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", a_name, " is on ", a.device(), " but ",
                    b_name, " is on ", b.device(), "; move them to the same device");
}

// (..., H, W) real or complex -> (..., H, W, K) real, contiguous.
inline at::Tensor as_real_channels(const at::Tensor& t) {
  if (t.is_complex()) return at::view_as_real(t.resolve_conj()).contiguous();
  return t.unsqueeze(-1).contiguous();
}

// Inverse of as_real_channels for a freshly allocated (..., K) real result.
inline at::Tensor from_real_channels(const at::Tensor& t, bool complex) {
  return complex ? at::view_as_complex(t) : t.squeeze(-1);
}

inline at::Tensor batched(const at::Tensor& t, bool is_batched) {
  return is_batched ? t : t.unsqueeze(0);
}

inline at::Tensor unbatched(const at::Tensor& t, bool is_batched) {
  return is_batched ? t : t.squeeze(0);
}

// Everything a bilinear launcher needs, in kernel layout.
struct SamplingArgs {
  at::Tensor canvas;     // (B, H, W, K) real contiguous
  at::Tensor positions;  // (B, P, 2) float64 contiguous
  bool is_batched;
  bool is_complex;
  int64_t B, H, W, K, P;
};

// Checks a (canvas, positions) pair as extract_patches and the position gradient take it.
inline SamplingArgs sampling_args(const char* op, const at::Tensor& canvas,
                                  const at::Tensor& positions) {
  check_data_tensor(op, "canvas", canvas);
  TORCH_CHECK_VALUE(canvas.dim() == 2 || canvas.dim() == 3, op,
                    ": canvas must have shape (H, W) or (B, H, W), got ", canvas.sizes());
  const bool is_batched = canvas.dim() == 3;
  check_positions(op, positions, is_batched, is_batched ? canvas.size(0) : 1);
  check_same_device(op, "canvas", canvas, "positions", positions);
  SamplingArgs a;
  a.is_batched = is_batched;
  a.is_complex = canvas.is_complex();
  a.canvas = as_real_channels(batched(canvas, is_batched));
  a.positions = batched(positions, is_batched).to(at::kDouble).contiguous();
  a.B = a.canvas.size(0);
  a.H = a.canvas.size(1);
  a.W = a.canvas.size(2);
  a.K = a.canvas.size(3);
  a.P = a.positions.size(1);
  return a;
}

// The caller's buffer of extract_patches.out, checked, as the (B, P, h, w, K) real view
// the kernels write (a view: writing it fills `out`).
inline at::Tensor extract_out_buffer(const SamplingArgs& a, const at::Tensor& canvas,
                                     const at::Tensor& out, int64_t patch_h, int64_t patch_w) {
  const char* op = "extract_patches";
  TORCH_CHECK_VALUE(out.defined(), op, ": out is missing");
  TORCH_CHECK_VALUE(out.scalar_type() == canvas.scalar_type(), op, ": out must have the dtype of canvas (",
                    canvas.scalar_type(), "), got ", out.scalar_type());
  check_same_device(op, "canvas", canvas, "out", out);
  std::vector<int64_t> want;
  if (a.is_batched) want.push_back(a.B);
  want.insert(want.end(), {a.P, patch_h, patch_w});
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(want), op, ": out must have shape ",
                    at::IntArrayRef(want), ", got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous() && !out.is_conj(), op,
                    ": out must be contiguous (and not a conjugate view)");
  at::Tensor real = out.is_complex() ? at::view_as_real(out) : out.unsqueeze(-1);
  return batched(real, a.is_batched);
}

// Everything a stitch launcher needs, in kernel layout.
struct StitchArgs {
  at::Tensor patches;    // (B, P, ph, pw, K) real contiguous
  at::Tensor positions;  // (B, P, 2) float64 contiguous
  at::Tensor weights;    // undefined, (ph, pw) or (B, P, ph, pw); real contiguous
  bool weights_per_patch = false;
  bool is_batched;
  bool is_complex;
  int64_t B, P, ph, pw, K;
};

inline StitchArgs stitch_args(const at::Tensor& patches, const at::Tensor& positions,
                              int64_t height, int64_t width,
                              const std::optional<at::Tensor>& weights) {
  const char* op = "stitch_patches";
  check_data_tensor(op, "patches", patches);
  TORCH_CHECK_VALUE(patches.dim() == 3 || patches.dim() == 4, op,
                    ": patches must have shape (P, h, w) or (B, P, h, w), got ", patches.sizes());
  TORCH_CHECK_VALUE(height >= 0 && width >= 0, op,
                    ": height and width must be non-negative, got ", height, " x ", width);
  StitchArgs a;
  a.is_batched = patches.dim() == 4;
  a.is_complex = patches.is_complex();
  check_positions(op, positions, a.is_batched, a.is_batched ? patches.size(0) : 1);
  check_same_device(op, "patches", patches, "positions", positions);
  a.patches = as_real_channels(batched(patches, a.is_batched));
  a.positions = batched(positions, a.is_batched).to(at::kDouble).contiguous();
  a.B = a.patches.size(0);
  a.P = a.patches.size(1);
  a.ph = a.patches.size(2);
  a.pw = a.patches.size(3);
  a.K = a.patches.size(4);
  TORCH_CHECK_VALUE(a.positions.size(1) == a.P, op, ": positions has ", a.positions.size(1),
                    " positions but patches has ", a.P, " patches");
  if (weights.has_value() && weights->defined()) {
    const at::Tensor& w = *weights;
    check_same_device(op, "patches", patches, "weights", w);
    TORCH_CHECK_VALUE(w.scalar_type() == a.patches.scalar_type(), op,
                      ": weights must be real with dtype ", a.patches.scalar_type(),
                      " to match patches of dtype ", patches.scalar_type(), ", got ",
                      w.scalar_type());
    const bool shared = w.dim() == 2 && w.size(0) == a.ph && w.size(1) == a.pw;
    a.weights_per_patch = !shared && w.sizes() == patches.sizes();
    TORCH_CHECK_VALUE(shared || a.weights_per_patch, op, ": weights must have shape (", a.ph,
                      ", ", a.pw, ") or the shape of patches ", patches.sizes(), ", got ",
                      w.sizes());
    a.weights = w.contiguous();
  }
  return a;
}

// Kernel-layout results (canvas (B,H,W,K), flat weight map) -> the op's outputs.
inline std::tuple<at::Tensor, at::Tensor> stitch_outputs(const StitchArgs& a,
                                                         const at::Tensor& canvas,
                                                         const at::Tensor& weight_map,
                                                         int64_t height, int64_t width) {
  at::Tensor c = unbatched(from_real_channels(canvas, a.is_complex), a.is_batched);
  if (!a.weights.defined()) return {c, weight_map};
  return {c, unbatched(weight_map.view({a.B, height, width}), a.is_batched)};
}

// position_grad takes extract's (canvas, positions) and a gradient shaped like its output.
inline at::Tensor position_grad_patches(const SamplingArgs& a, const at::Tensor& canvas,
                                        const at::Tensor& grad_patches) {
  const char* op = "position_grad";
  TORCH_CHECK_VALUE(grad_patches.defined() && grad_patches.scalar_type() == canvas.scalar_type(),
                    op, ": grad_patches must have the dtype of canvas (", canvas.scalar_type(), ")");
  check_same_device(op, "canvas", canvas, "grad_patches", grad_patches);
  TORCH_CHECK_VALUE(grad_patches.dim() == canvas.dim() + 1 &&
                        (!a.is_batched || grad_patches.size(0) == a.B) &&
                        grad_patches.size(-3) == a.P,
                    op, ": grad_patches must have shape ", a.is_batched ? "(B, P, h, w)" : "(P, h, w)",
                    " with B=", a.B, " and P=", a.P, ", got ", grad_patches.sizes());
  return as_real_channels(batched(grad_patches, a.is_batched));
}

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

// Kernel results (float64, flat) -> outputs of shape patches.shape[:-2] in the real
// dtype of the patches.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stats_outputs(
    const StatsArgs& a, const at::Tensor& mean, const at::Tensor& var, const at::Tensor& mn,
    const at::Tensor& mx) {
  const auto finish = [&](const at::Tensor& t) {
    return t.to(a.data.scalar_type()).view(a.leading_shape);
  };
  return {finish(mean), finish(var), finish(mn), finish(mx)};
}

inline void check_patch_size(const char* op, int64_t patch_h, int64_t patch_w) {
  TORCH_CHECK_VALUE(patch_h > 0 && patch_w > 0, op,
                    ": patch_h and patch_w must be positive, got ", patch_h, " x ", patch_w);
}

// Positions must be finite: NaN would floor to an arbitrary integer. Checked on the CPU
// copy only (a device check would force a synchronisation; ops.py checks CUDA inputs).
inline void check_finite_positions(const char* op, const at::Tensor& positions_f64_cpu) {
  const double* p = positions_f64_cpu.data_ptr<double>();
  const int64_t n = positions_f64_cpu.numel();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(p[i]), op, ": positions contains a non-finite value (",
                      p[i], ") at flat index ", i);
  }
}

// The extract_patches and extract_patches_into kernels of a device whose
// `fill(args, buf, h, w)` writes a (B, P, h, w, K) real contiguous buffer: the checks, the
// buffer (a new tensor, or the caller's `out` seen in kernel layout) and the result's
// layout, shared by the CPU and CUDA files, which register these instantiations directly:
//   m.impl("extract_patches", &extract_patches_with<extract_into>);
template <auto fill>
at::Tensor extract_patches_with(const at::Tensor& canvas, const at::Tensor& positions,
                                int64_t patch_h, int64_t patch_w) {
  check_patch_size("extract_patches", patch_h, patch_w);
  const SamplingArgs a = sampling_args("extract_patches", canvas, positions);
  at::Tensor out = at::empty({a.B, a.P, patch_h, patch_w, a.K}, a.canvas.options());
  fill(a, out, patch_h, patch_w);
  return unbatched(from_real_channels(out, a.is_complex), a.is_batched);
}

template <auto fill>
void extract_patches_into_with(const at::Tensor& canvas, const at::Tensor& positions,
                               int64_t patch_h, int64_t patch_w, const at::Tensor& out) {
  check_patch_size("extract_patches", patch_h, patch_w);
  const SamplingArgs a = sampling_args("extract_patches", canvas, positions);
  at::Tensor buf = extract_out_buffer(a, canvas, out, patch_h, patch_w);
  fill(a, buf, patch_h, patch_w);
}

}  // namespace ptycho_fast
