// The host side of extract_patches and extract_patches_into, shared by the CPU and CUDA
// files: the checks, the buffer (a new tensor, or the caller's `out` seen in kernel
// layout) and the result's layout, around a device's
//   void fill(const SamplingArgs& a, at::Tensor& buf, int64_t patch_h, int64_t patch_w)
// that writes a (B, P, h, w, K) real contiguous buffer. The device files register these
// instantiations directly:
//   m.impl("extract_patches", &extract_patches_with<extract_into>);
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/view_as_real.h>
#include <c10/util/Exception.h>

#include <vector>

#include "checks.h"
#include "kernel_layout.h"
#include "sampling_args.h"

namespace ptycho_fast {

// The caller's buffer of extract_patches_into, checked, as the (B, P, h, w, K) real view
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

template <auto fill>
at::Tensor extract_patches_with(const at::Tensor& canvas, const at::Tensor& positions,
                                int64_t patch_h, int64_t patch_w) {
  check_patch_size("extract_patches", patch_h, patch_w);
  const SamplingArgs a = sampling_args("extract_patches", canvas, positions);
  at::Tensor out = at::empty({a.B, a.P, patch_h, patch_w, a.K}, a.data.options());
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
