// CPU kernel of patch_stats: mean, population variance, min and max of every patch in
// one read, accumulated in double (Welford state from common/welford.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../common/stats_host.h"
#include "../common/stats_view.h"
#include "../common/welford.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

// Chunks of this many values are summarised exactly (three tight passes over a buffer
// that stays in L1: view, sum/min/max, squared deviations), then combined (Chan):
// vectorisable, and as accurate as a running Welford update.
constexpr int64_t kChunk = 512;

template <typename T, StatsView View>
void patch_stats_kernel(const T* data, int64_t M, int64_t n, int64_t K, double* out_mean,
                        double* out_var, double* out_min, double* out_max) {
  at::parallel_for(0, M, grain_for(n * K), [&](int64_t begin, int64_t end) {
    double buf[kChunk];
    for (int64_t m = begin; m < end; ++m) {
      const T* x = data + m * n * K;
      WelfordState total = welford_empty();
      for (int64_t start = 0; start < n; start += kChunk) {
        const int64_t len = std::min<int64_t>(kChunk, n - start);
        const T* e = x + start * K;
        for (int64_t t = 0; t < len; ++t) {
          buf[t] = view_scalar(static_cast<double>(e[t * K]),
                               K == 2 ? static_cast<double>(e[t * K + 1]) : 0.0, View);
        }
        // Four partial sums/extrema: independent chains the compiler can keep in
        // registers. NaN is tracked separately (min/max below ignore it).
        double sum[4] = {0, 0, 0, 0}, lo[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
        double hi[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        bool has_nan = false;
        int64_t t = 0;
        for (; t + 4 <= len; t += 4) {
          for (int u = 0; u < 4; ++u) {
            const double v = buf[t + u];
            sum[u] += v;
            lo[u] = v < lo[u] ? v : lo[u];
            hi[u] = v > hi[u] ? v : hi[u];
            has_nan |= v != v;
          }
        }
        for (; t < len; ++t) {
          const double v = buf[t];
          sum[0] += v;
          lo[0] = v < lo[0] ? v : lo[0];
          hi[0] = v > hi[0] ? v : hi[0];
          has_nan |= v != v;
        }
        WelfordState chunk;
        chunk.n = len;
        chunk.mean = ((sum[0] + sum[1]) + (sum[2] + sum[3])) / static_cast<double>(len);
        chunk.min = has_nan ? NAN : std::min(std::min(lo[0], lo[1]), std::min(lo[2], lo[3]));
        chunk.max = has_nan ? NAN : std::max(std::max(hi[0], hi[1]), std::max(hi[2], hi[3]));
        double m2[4] = {0, 0, 0, 0};
        for (t = 0; t + 4 <= len; t += 4) {
          for (int u = 0; u < 4; ++u) {
            const double d = buf[t + u] - chunk.mean;
            m2[u] += d * d;
          }
        }
        for (; t < len; ++t) {
          const double d = buf[t] - chunk.mean;
          m2[0] += d * d;
        }
        chunk.m2 = (m2[0] + m2[1]) + (m2[2] + m2[3]);
        total = welford_combine(total, chunk);
      }
      welford_store(total, m, out_mean, out_var, out_min, out_max);
    }
  });
}

// The view is a template argument so that its switch leaves the inner loop.
template <typename T>
void patch_stats_dispatch(const StatsArgs& a, double* mean, double* var, double* mn, double* mx) {
  const T* x = a.data.const_data_ptr<T>();
  switch (a.view) {
    case StatsView::Value: return patch_stats_kernel<T, StatsView::Value>(x, a.M, a.n, a.K, mean, var, mn, mx);
    case StatsView::Abs: return patch_stats_kernel<T, StatsView::Abs>(x, a.M, a.n, a.K, mean, var, mn, mx);
    case StatsView::Real: return patch_stats_kernel<T, StatsView::Real>(x, a.M, a.n, a.K, mean, var, mn, mx);
    case StatsView::Imag: return patch_stats_kernel<T, StatsView::Imag>(x, a.M, a.n, a.K, mean, var, mn, mx);
    case StatsView::Phase: return patch_stats_kernel<T, StatsView::Phase>(x, a.M, a.n, a.K, mean, var, mn, mx);
  }
}

// Writes the four (M) float64 results from the checked arguments.
void stats_into(const StatsArgs& a, at::Tensor& mean, at::Tensor& var, at::Tensor& mn,
                at::Tensor& mx) {
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "patch_stats_cpu", [&] {
    patch_stats_dispatch<scalar_t>(a, mean.mutable_data_ptr<double>(), var.mutable_data_ptr<double>(),
                                   mn.mutable_data_ptr<double>(), mx.mutable_data_ptr<double>());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) { m.impl("patch_stats", &patch_stats_with<stats_into>); }

}  // namespace ptycho_fast
