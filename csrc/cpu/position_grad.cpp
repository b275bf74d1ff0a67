// CPU kernel of position_grad: for each patch, the derivative of
// sum(grad * extract(canvas, pos)) with respect to its (row, col) position.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/bilinear.h"
#include "../common/tensor_args.h"
#include "cpu_parallel.h"

namespace ptycho_fast {
namespace {

template <typename T>
void position_grad_kernel(const T* canvas, const double* positions, const T* grad, double* out,
                          int64_t B, int64_t H, int64_t W, int64_t K, int64_t P, int64_t ph,
                          int64_t pw) {
  at::parallel_for(0, B * P, grain_for(ph * pw * K), [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const T* img = canvas + (bp / P) * H * W * K;
      const AxisSplit sy = split_coordinate(positions[2 * bp]);
      const AxisSplit sx = split_coordinate(positions[2 * bp + 1]);
      const BilinearWeights<T> w = bilinear_weights<T>(sy.frac, sx.frac);
      const T* g = grad + bp * ph * pw * K;
      // Sums in double: a patch adds up ph*pw*K products of either sign.
      double gy = 0.0, gx = 0.0;
      for (int64_t i = 0; i < ph; ++i) {
        for (int64_t j = 0; j < pw; ++j) {
          for (int64_t k = 0; k < K; ++k) {
            const Corners<T> c = canvas_corners(img, H, W, K, sy.base + i, sx.base + j, k);
            T dy, dx;
            bilinear_interp_grad(c.v00, c.v01, c.v10, c.v11, w, &dy, &dx);
            const T gv = g[(i * pw + j) * K + k];
            gy += static_cast<double>(gv * dy);
            gx += static_cast<double>(gv * dx);
          }
        }
      }
      out[2 * bp] = gy;
      out[2 * bp + 1] = gx;
    }
  });
}

at::Tensor position_grad_cpu(const at::Tensor& canvas, const at::Tensor& positions,
                             const at::Tensor& grad_patches) {
  const SamplingArgs a = sampling_args("position_grad", canvas, positions);
  const at::Tensor g = position_grad_patches(a, canvas, grad_patches);
  check_finite_positions("position_grad", a.positions);
  at::Tensor out = at::empty({a.B, a.P, 2}, a.positions.options());
  AT_DISPATCH_FLOATING_TYPES(a.canvas.scalar_type(), "position_grad_cpu", [&] {
    position_grad_kernel<scalar_t>(a.canvas.data_ptr<scalar_t>(), a.positions.data_ptr<double>(),
                                   g.data_ptr<scalar_t>(), out.data_ptr<double>(), a.B, a.H, a.W,
                                   a.K, a.P, g.size(2), g.size(3));
  });
  return unbatched(out.to(positions.scalar_type()), a.is_batched);
}

}  // namespace

TORCH_LIBRARY_IMPL(ptycho_fast, CPU, m) { m.impl("position_grad", &position_grad_cpu); }

}  // namespace ptycho_fast
