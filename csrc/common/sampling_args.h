// The (canvas, positions) pair that extract_patches and _position_grad sample from,
// checked and brought to kernel layout (shared by their CPU and CUDA launchers).
#pragma once

#include <ATen/core/Tensor.h>

#include "kernel_layout.h"

namespace ptycho_fast {

// Everything a bilinear launcher needs, in kernel layout: data is the canvas
// (B, H, W, K).
struct SamplingArgs : PositionedData {
  int64_t H = 0, W = 0, K = 0, P = 0;
};

inline SamplingArgs sampling_args(const char* op, const at::Tensor& canvas,
                                  const at::Tensor& positions) {
  SamplingArgs a{positioned_data(op, "canvas", canvas, 2, "(H, W) or (B, H, W)", positions)};
  a.H = a.data.size(1);
  a.W = a.data.size(2);
  a.K = a.data.size(3);
  a.P = a.positions.size(1);
  return a;
}

}  // namespace ptycho_fast
