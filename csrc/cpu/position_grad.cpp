// CPU kernel of _position_grad: for each patch, the derivative of
// sum(grad * extract(canvas, pos)) with respect to its (row, col) position.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/bilinear.h"
#include "../common/checks.h"
#include "../common/position_grad_host.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

template <typename T>
void position_grad_kernel(const T* canvas, const double* positions, const T* grad, double* out,
                          int64_t B, int64_t H, int64_t W, int64_t K, int64_t P, int64_t ph,
                          int64_t pw) {
  at::parallel_for(0, B * P, grain_for(ph * pw * K), [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const auto s = patch_setup<T>(positions, bp, canvas, bp / P, H * W * K);
      const T* g = grad + bp * ph * pw * K;
      // Sums in double: a patch adds up ph*pw*K products of either sign.
      double gy = 0.0, gx = 0.0;
      for_each_patch_value(s, H, W, K, ph, pw, [&](int64_t v, const Corners<T>& c) {
        T dy, dx;
        bilinear_interp_grad(c.v00, c.v01, c.v10, c.v11, s.w, &dy, &dx);
        gy += static_cast<double>(g[v] * dy);
        gx += static_cast<double>(g[v] * dx);
      });
      out[2 * bp] = gy;
      out[2 * bp + 1] = gx;
    }
  });
}

// Writes out ((B, P, 2) float64) from the checked arguments; grad is (B, P, h, w, K).
void position_grad_into(const SamplingArgs& a, const at::Tensor& grad, at::Tensor& out) {
  check_finite_positions(kPositionGradOp, a.positions);
  AT_DISPATCH_FLOATING_TYPES(a.data.scalar_type(), "_position_grad_cpu", [&] {
    position_grad_kernel<scalar_t>(a.data.const_data_ptr<scalar_t>(),
                                   a.positions.const_data_ptr<double>(),
                                   grad.const_data_ptr<scalar_t>(), out.mutable_data_ptr<double>(),
                                   a.B, a.H, a.W, a.K, a.P, grad.size(2), grad.size(3));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) {
  m.impl("_position_grad", &position_grad_with<position_grad_into>);
}

}  // namespace ptycho_fast
