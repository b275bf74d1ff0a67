// Running mean / variance / min / max, shared by the CPU and CUDA statistics kernels.
// Modelled on ATen's WelfordOps (SharedReduceOps.h): update one value, combine two
// partial states (Chan et al.), project to (mean, population variance). Always double:
// amplitudes ~1e4 with a tiny spread must keep their variance in float32 inputs too.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace ptycho_fast {

struct WelfordState {
  double mean;
  double m2;  // sum of squared deviations from the mean
  double min;
  double max;
  int64_t n;
};

HOST_DEVICE WelfordState welford_empty() {
  return WelfordState{0.0, 0.0, INFINITY, -INFINITY, 0};
}

// fmin/fmax drop NaN, so a NaN is kept explicitly: a patch containing NaN must report
// NaN (that is what the collapse guard looks for), never a finite min/max.
HOST_DEVICE double nan_min(double a, double b) { return (a != a || b != b) ? NAN : (a < b ? a : b); }
HOST_DEVICE double nan_max(double a, double b) { return (a != a || b != b) ? NAN : (a > b ? a : b); }

HOST_DEVICE void welford_update(WelfordState& s, double x) {
  s.n += 1;
  const double delta = x - s.mean;
  s.mean += delta / static_cast<double>(s.n);
  s.m2 += delta * (x - s.mean);
  s.min = nan_min(s.min, x);
  s.max = nan_max(s.max, x);
}

HOST_DEVICE WelfordState welford_combine(const WelfordState& a, const WelfordState& b) {
  if (a.n == 0) return b;
  if (b.n == 0) return a;
  const int64_t n = a.n + b.n;
  const double nb_over_n = static_cast<double>(b.n) / static_cast<double>(n);
  const double delta = b.mean - a.mean;
  WelfordState r;
  r.n = n;
  r.mean = a.mean + delta * nb_over_n;
  r.m2 = a.m2 + b.m2 + delta * delta * static_cast<double>(a.n) * nb_over_n;
  r.min = nan_min(a.min, b.min);
  r.max = nan_max(a.max, b.max);
  return r;
}

// Population variance (ddof = 0). An empty patch has NaN statistics.
HOST_DEVICE double welford_variance(const WelfordState& s) {
  return s.n > 0 ? s.m2 / static_cast<double>(s.n) : NAN;
}

HOST_DEVICE double welford_mean(const WelfordState& s) { return s.n > 0 ? s.mean : NAN; }

// Stores a patch's final state as output m of the four results: mean, population
// variance, min, max (all NaN for an empty patch).
HOST_DEVICE void welford_store(const WelfordState& s, int64_t m, double* out_mean,
                               double* out_var, double* out_min, double* out_max) {
  out_mean[m] = welford_mean(s);
  out_var[m] = welford_variance(s);
  out_min[m] = s.n > 0 ? s.min : NAN;
  out_max[m] = s.n > 0 ? s.max : NAN;
}

}  // namespace ptycho_fast
