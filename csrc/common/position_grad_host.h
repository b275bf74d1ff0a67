// The host side of _position_grad, shared by the CPU and CUDA files: the checks (extract's
// (canvas, positions) and a gradient shaped like extract's output), the (B, P, 2) float64
// result and its layout, around a device's
//   void fill(const SamplingArgs& a, const at::Tensor& grad, at::Tensor& out)
// with grad the (B, P, h, w, K) real contiguous gradient. The device files register
//   m.impl("_position_grad", &position_grad_with<position_grad_into>);
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "checks.h"
#include "kernel_layout.h"
#include "sampling_args.h"

namespace ptycho_fast {

constexpr const char* kPositionGradOp = "_position_grad";

// grad_patches, checked against extract's (canvas, positions), in kernel layout.
inline at::Tensor position_grad_patches(const SamplingArgs& a, const at::Tensor& canvas,
                                        const at::Tensor& grad_patches) {
  const char* op = kPositionGradOp;
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

template <auto fill>
at::Tensor position_grad_with(const at::Tensor& canvas, const at::Tensor& positions,
                              const at::Tensor& grad_patches) {
  const SamplingArgs a = sampling_args(kPositionGradOp, canvas, positions);
  const at::Tensor g = position_grad_patches(a, canvas, grad_patches);
  at::Tensor out = at::empty({a.B, a.P, 2}, a.positions.options());
  fill(a, g, out);
  return unbatched(out.to(positions.scalar_type()), a.is_batched);
}

}  // namespace ptycho_fast
