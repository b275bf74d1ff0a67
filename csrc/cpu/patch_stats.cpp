// CPU kernel of patch_stats: mean, population variance, min and max of every patch in
// one read, accumulated in double (Welford state from common/welford.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../common/tensor_args.h"
#include "../common/welford.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

// Rows of this many values are summarised exactly (two passes over a buffer that stays
// in L1), then combined: vectorisable, and as accurate as Welford.
constexpr int64_t kChunk = 256;

template <typename T>
void patch_stats_kernel(const T* data, int64_t M, int64_t n, int64_t K, StatsView view,
                        double* out_mean, double* out_var, double* out_min, double* out_max) {
  at::parallel_for(0, M, grain_for(n * K), [&](int64_t begin, int64_t end) {
    double buf[kChunk];
    for (int64_t m = begin; m < end; ++m) {
      const T* x = data + m * n * K;
      WelfordState total = welford_empty();
      for (int64_t start = 0; start < n; start += kChunk) {
        const int64_t len = std::min<int64_t>(kChunk, n - start);
        double sum = 0.0;
        WelfordState chunk = welford_empty();
        for (int64_t t = 0; t < len; ++t) {
          const T* e = x + (start + t) * K;
          const double v = view_scalar(static_cast<double>(e[0]),
                                       K == 2 ? static_cast<double>(e[1]) : 0.0, view);
          buf[t] = v;
          sum += v;
          chunk.min = nan_min(chunk.min, v);
          chunk.max = nan_max(chunk.max, v);
        }
        chunk.n = len;
        chunk.mean = sum / static_cast<double>(len);
        double m2 = 0.0;
        for (int64_t t = 0; t < len; ++t) {
          const double d = buf[t] - chunk.mean;
          m2 += d * d;
        }
        chunk.m2 = m2;
        total = welford_combine(total, chunk);
      }
      out_mean[m] = welford_mean(total);
      out_var[m] = welford_variance(total);
      out_min[m] = total.n > 0 ? total.min : NAN;
      out_max[m] = total.n > 0 ? total.max : NAN;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_stats_cpu(
    const at::Tensor& patches, c10::string_view view) {
  const StatsArgs a = stats_args(patches, view);
  const auto opts = a.data.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({a.M}, opts), var = at::empty({a.M}, opts);
  at::Tensor mn = at::empty({a.M}, opts), mx = at::empty({a.M}, opts);
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "patch_stats_cpu", [&] {
    patch_stats_kernel<scalar_t>(a.data.data_ptr<scalar_t>(), a.M, a.n, a.K, a.view,
                                 mean.data_ptr<double>(), var.data_ptr<double>(),
                                 mn.data_ptr<double>(), mx.data_ptr<double>());
  });
  return stats_outputs(a, mean, var, mn, mx);
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) { m.impl("patch_stats", &patch_stats_cpu); }

}  // namespace ptycho_fast
