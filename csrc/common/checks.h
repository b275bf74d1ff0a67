// Host-side argument checks shared by every op's CPU and CUDA launchers, so both devices
// reject the same inputs with the same messages (ValueError in Python, naming the op and
// the argument).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace ptycho_fast {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kComplexFloat ||
         t == at::kComplexDouble;
}

inline void check_data_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is missing");
  TORCH_CHECK_VALUE(is_supported_dtype(t.scalar_type()), op, ": ", name,
                    " must be float32, float64, complex64 or complex128, got ",
                    t.scalar_type());
}

// positions: (P, 2) when unbatched, (B, P, 2) when batched; floating point.
inline void check_positions(const char* op, const at::Tensor& positions, bool batched,
                            int64_t batch) {
  TORCH_CHECK_VALUE(positions.defined(), op, ": positions is missing");
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
                    op, ": positions must be float32 or float64 (row, col) pixel coordinates, got ",
                    positions.scalar_type());
  const int64_t want_dim = batched ? 3 : 2;
  TORCH_CHECK_VALUE(positions.dim() == want_dim && positions.size(-1) == 2, op,
                    ": positions must have shape ", batched ? "(B, P, 2)" : "(P, 2)",
                    " to match the ", batched ? "batched" : "unbatched", " data, got ",
                    positions.sizes());
  if (batched) {
    TORCH_CHECK_VALUE(positions.size(0) == batch, op, ": positions has batch size ",
                      positions.size(0), " but the data has batch size ", batch);
  }
}

inline void check_same_device(const char* op, const char* a_name, const at::Tensor& a,
                              const char* b_name, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", a_name, " is on ", a.device(), " but ",
                    b_name, " is on ", b.device(), "; move them to the same device");
}

inline void check_patch_size(const char* op, int64_t patch_h, int64_t patch_w) {
  TORCH_CHECK_VALUE(patch_h > 0 && patch_w > 0, op,
                    ": patch_h and patch_w must be positive, got ", patch_h, " x ", patch_w);
}

// Positions must be finite: NaN would floor to an arbitrary integer. Checked on the CPU
// copy only (a device check would force a synchronisation; ops.py checks CUDA inputs).
inline void check_finite_positions(const char* op, const at::Tensor& positions_f64_cpu) {
  const double* p = positions_f64_cpu.const_data_ptr<double>();
  const int64_t n = positions_f64_cpu.numel();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(p[i]), op, ": positions contains a non-finite value (",
                      p[i], ") at flat index ", i);
  }
}

}  // namespace ptycho_fast
