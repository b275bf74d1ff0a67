// The layout every kernel works on, and the way there and back: real tensors with an
// explicit channel axis K (1 for real data, 2 for complex data seen through
// view_as_real), with a batch axis, contiguous; positions (B, P, 2) float64 contiguous
// (split once per patch in double, common/bilinear.h). positioned_data checks an op's
// data and positions on the way in.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/view_as_complex.h>
#include <ATen/ops/view_as_real.h>
#include <c10/util/Exception.h>

#include "checks.h"

namespace ptycho_fast {

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

// The two inputs of every op that places patches: its data (the canvas of extract and
// _position_grad, the patches of stitch), with or without a leading batch axis, and the
// positions, checked against each other and in kernel layout.
struct PositionedData {
  at::Tensor data;       // (B, ..., K) real contiguous
  at::Tensor positions;  // (B, P, 2) float64 contiguous
  bool is_batched;
  bool is_complex;
  int64_t B;
};

// `data` (argument `name`) has `dim` dims, or dim + 1 when batched; `shapes` names both
// for the error, e.g. "(H, W) or (B, H, W)".
inline PositionedData positioned_data(const char* op, const char* name, const at::Tensor& data,
                                      int64_t dim, const char* shapes,
                                      const at::Tensor& positions) {
  check_data_tensor(op, name, data);
  TORCH_CHECK_VALUE(data.dim() == dim || data.dim() == dim + 1, op, ": ", name,
                    " must have shape ", shapes, ", got ", data.sizes());
  const bool is_batched = data.dim() == dim + 1;
  check_positions(op, positions, is_batched, is_batched ? data.size(0) : 1);
  check_same_device(op, name, data, "positions", positions);
  PositionedData d;
  d.is_batched = is_batched;
  d.is_complex = data.is_complex();
  d.data = as_real_channels(batched(data, is_batched));
  d.positions = batched(positions, is_batched).to(at::kDouble).contiguous();
  d.B = d.data.size(0);
  return d;
}

}  // namespace ptycho_fast
