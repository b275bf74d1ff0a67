// Which scalar of an element patch_stats describes, shared by the CPU and CUDA
// statistics kernels (HOST_DEVICE) and by the host code that parses the op's `view`.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace ptycho_fast {

// Values match ops.py.
enum class StatsView : int64_t { Value = 0, Abs = 1, Real = 2, Imag = 3, Phase = 4 };

// The viewed scalar of element (re, im); real inputs pass im = 0.
HOST_DEVICE double view_scalar(double re, double im, StatsView view) {
  switch (view) {
    case StatsView::Value:
    case StatsView::Real: return re;
    case StatsView::Abs: return sqrt(re * re + im * im);
    case StatsView::Imag: return im;
    case StatsView::Phase: return atan2(im, re);
  }
  return re;
}

}  // namespace ptycho_fast
