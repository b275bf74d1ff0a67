// The host side of stitch_patches, shared by the CPU and CUDA files: the checks, the
// zeroed kernel-layout results and the op's outputs, around a device's
//   void fill(const StitchArgs& a, at::Tensor& canvas, at::Tensor& weight_map,
//             int64_t height, int64_t width)
// that adds the patches into canvas ((B, H, W, K) real, zeroed) and, with weights, the
// weights into weight_map ((B * H * W) real, zeroed; empty without weights). The device
// files register
//   m.impl("stitch_patches", &stitch_patches_with<stitch_into>);
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>

#include "checks.h"
#include "kernel_layout.h"

namespace ptycho_fast {

// Everything a stitch launcher needs, in kernel layout: data is the patches
// (B, P, ph, pw, K).
struct StitchArgs : PositionedData {
  at::Tensor weights = {};  // undefined, (ph, pw) or (B, P, ph, pw); real contiguous
  bool weights_per_patch = false;
  int64_t P = 0, ph = 0, pw = 0, K = 0;
};

inline StitchArgs stitch_args(const at::Tensor& patches, const at::Tensor& positions,
                              int64_t height, int64_t width,
                              const std::optional<at::Tensor>& weights) {
  const char* op = "stitch_patches";
  StitchArgs a{positioned_data(op, "patches", patches, 3, "(P, h, w) or (B, P, h, w)", positions)};
  TORCH_CHECK_VALUE(height >= 0 && width >= 0, op,
                    ": height and width must be non-negative, got ", height, " x ", width);
  a.P = a.data.size(1);
  a.ph = a.data.size(2);
  a.pw = a.data.size(3);
  a.K = a.data.size(4);
  TORCH_CHECK_VALUE(a.positions.size(1) == a.P, op, ": positions has ", a.positions.size(1),
                    " positions but patches has ", a.P, " patches");
  if (weights.has_value() && weights->defined()) {
    const at::Tensor& w = *weights;
    check_same_device(op, "patches", patches, "weights", w);
    TORCH_CHECK_VALUE(w.scalar_type() == a.data.scalar_type(), op,
                      ": weights must be real with dtype ", a.data.scalar_type(),
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

template <auto fill>
std::tuple<at::Tensor, at::Tensor> stitch_patches_with(const at::Tensor& patches,
                                                       const at::Tensor& positions,
                                                       int64_t height, int64_t width,
                                                       const std::optional<at::Tensor>& weights) {
  const StitchArgs a = stitch_args(patches, positions, height, width, weights);
  const auto opts = a.data.options();
  at::Tensor canvas = at::zeros({a.B, height, width, a.K}, opts);
  at::Tensor weight_map = at::zeros({a.weights.defined() ? a.B * height * width : 0}, opts);
  fill(a, canvas, weight_map, height, width);
  // Kernel layout -> the op's outputs; the weight map stays empty without weights.
  at::Tensor c = unbatched(from_real_channels(canvas, a.is_complex), a.is_batched);
  if (!a.weights.defined()) return {c, weight_map};
  return {c, unbatched(weight_map.view({a.B, height, width}), a.is_batched)};
}

}  // namespace ptycho_fast
