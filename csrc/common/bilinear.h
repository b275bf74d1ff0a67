// Bilinear sampling arithmetic shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// Convention (docs/ops.md): a position is the (row, col) of a patch's top-left pixel in
// canvas pixels. It is split ONCE into an integer base and a fraction in [0, 1):
//   base = floor(pos), frac = pos - base.
// Patch pixel (i, j) then reads canvas rows base_y + i, base_y + i + 1 with weights
// (1 - fy, fy) and columns base_x + j, base_x + j + 1 with weights (1 - fx, fx).
// Splitting once (instead of flooring pos + i per pixel) keeps every pixel of a patch
// on the same fraction, exactly, in float32 as in float64.
// Canvas pixels outside [0, H) x [0, W) read as zero; in the adjoint they are dropped.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace ptycho_fast {

// Integer base and fractional part of one coordinate. Positions are read as double so
// that floor() is exact for any canvas a machine can hold.
struct AxisSplit {
  int64_t base;
  double frac;
};

HOST_DEVICE AxisSplit split_coordinate(double pos) {
  const double base = floor(pos);
  return AxisSplit{static_cast<int64_t>(base), pos - base};
}

// The four weights of one patch (identical for all its pixels).
template <typename T>
struct BilinearWeights {
  T wy0, wy1, wx0, wx1;
};

template <typename T>
HOST_DEVICE BilinearWeights<T> bilinear_weights(double fy, double fx) {
  return BilinearWeights<T>{static_cast<T>(1.0 - fy), static_cast<T>(fy),
                            static_cast<T>(1.0 - fx), static_cast<T>(fx)};
}

// The start-up every kernel runs once per patch bp (= b * P + p in the (B, P, 2)
// positions): its position split once into base and fraction, its four bilinear weights
// and, given a tensor laid out (B, H, W, K) and image_size = H * W * K, the image of its
// batch item b there (the canvas it reads, or is added into).
template <typename T, typename Ptr>
struct PatchSetup {
  Ptr img;         // images + b * image_size; nullptr when no images are given
  AxisSplit y, x;  // row and column of the top-left pixel
  BilinearWeights<T> w;
};

template <typename T, typename Ptr = const T*>
HOST_DEVICE PatchSetup<T, Ptr> patch_setup(const double* positions, int64_t bp,
                                           Ptr images = nullptr, int64_t b = 0,
                                           int64_t image_size = 0) {
  const AxisSplit y = split_coordinate(positions[2 * bp]);
  const AxisSplit x = split_coordinate(positions[2 * bp + 1]);
  return PatchSetup<T, Ptr>{images + b * image_size, y, x, bilinear_weights<T>(y.frac, x.frac)};
}

// Interpolate between the four corners v00 (row, col), v01 (row, col+1), v10, v11.
// Columns within each row first, then rows: the same order as reference.py.
template <typename T>
HOST_DEVICE T bilinear_interp(T v00, T v01, T v10, T v11, const BilinearWeights<T>& w) {
  return w.wy0 * (w.wx0 * v00 + w.wx1 * v01) + w.wy1 * (w.wx0 * v10 + w.wx1 * v11);
}

// Derivatives of bilinear_interp with respect to the fractional row (dy) and column (dx)
// offsets: the bilinear weights are linear in the fraction, so these are exact
// (right-derivatives at integer positions, where the interpolant has a kink).
template <typename T>
HOST_DEVICE void bilinear_interp_grad(T v00, T v01, T v10, T v11, const BilinearWeights<T>& w,
                                      T* dy, T* dx) {
  *dy = w.wx0 * (v10 - v00) + w.wx1 * (v11 - v01);
  *dx = w.wy0 * (v01 - v00) + w.wy1 * (v11 - v10);
}

HOST_DEVICE bool in_range(int64_t i, int64_t n) { return i >= 0 && i < n; }

// One channel of a canvas stored as (H, W, K) contiguous, read with zero padding.
template <typename T>
HOST_DEVICE T canvas_value(const T* img, int64_t H, int64_t W, int64_t K, int64_t r, int64_t c,
                           int64_t k) {
  return (in_range(r, H) && in_range(c, W)) ? img[(r * W + c) * K + k] : T(0);
}

// The four corners around canvas pixel (r, c) — (r,c), (r,c+1), (r+1,c), (r+1,c+1) —
// with zero padding. Used by the boundary path of the CPU kernels and by CUDA.
template <typename T>
struct Corners {
  T v00, v01, v10, v11;
};

template <typename T>
HOST_DEVICE Corners<T> canvas_corners(const T* img, int64_t H, int64_t W, int64_t K, int64_t r,
                                      int64_t c, int64_t k) {
  return Corners<T>{canvas_value(img, H, W, K, r, c, k), canvas_value(img, H, W, K, r, c + 1, k),
                    canvas_value(img, H, W, K, r + 1, c, k),
                    canvas_value(img, H, W, K, r + 1, c + 1, k)};
}

// Calls f(v, corners) for every value v = (i * pw + j) * K + k of a ph x pw x K patch
// placed by s, with the four canvas corners of that value (zero padding): the
// bounds-tested path of the CPU kernels, one patch after another.
template <typename T, typename Ptr, typename F>
HOST_DEVICE void for_each_patch_value(const PatchSetup<T, Ptr>& s, int64_t H, int64_t W, int64_t K,
                                      int64_t ph, int64_t pw, F&& f) {
  for (int64_t i = 0; i < ph; ++i) {
    for (int64_t j = 0; j < pw; ++j) {
      for (int64_t k = 0; k < K; ++k) {
        f((i * pw + j) * K + k, canvas_corners<T>(s.img, H, W, K, s.y.base + i, s.x.base + j, k));
      }
    }
  }
}

// Readers of one patch pixel (i, j), channel fixed, for stitch_gather: the plain patch,
// the patch times its weight window, and the weight window alone (the weight map).
template <typename T>
struct PatchReader {
  const T* patch;  // (ph, pw, K) contiguous
  int64_t pw, K, k;
  HOST_DEVICE T operator()(int64_t i, int64_t j) const { return patch[(i * pw + j) * K + k]; }
};

template <typename T>
struct WeightedPatchReader {
  const T* patch;   // (ph, pw, K) contiguous
  const T* weight;  // (ph, pw) contiguous
  int64_t pw, K, k;
  HOST_DEVICE T operator()(int64_t i, int64_t j) const {
    return weight[i * pw + j] * patch[(i * pw + j) * K + k];
  }
};

template <typename T>
struct WeightReader {
  const T* weight;  // (ph, pw) contiguous
  int64_t pw;
  HOST_DEVICE T operator()(int64_t i, int64_t j) const { return weight[i * pw + j]; }
};

// The adjoint seen from the canvas: the total that canvas pixel (base_y + i, base_x + j)
// receives from one patch of ph x pw pixels. Patch pixel (i, j) adds wy0*wx0 of itself
// to canvas (i, j), wy0*wx1 to (i, j+1), wy1*wx0 to (i+1, j), wy1*wx1 to (i+1, j+1); so
// canvas (i, j) gathers patch rows i (wy0) and i-1 (wy1), columns j (wx0) and j-1 (wx1):
// a bilinear_interp of the patch with the corners mirrored, missing pixels read as 0.
// Every stitch kernel runs this arithmetic (the CPU one on whole padded rows).
template <typename T>
HOST_DEVICE T stitch_combine(T here, T left, T up, T up_left, const BilinearWeights<T>& w) {
  return bilinear_interp(here, left, up, up_left, w);
}

template <typename T, typename Read>
HOST_DEVICE T stitch_gather(const Read& read, int64_t ph, int64_t pw, int64_t i, int64_t j,
                            const BilinearWeights<T>& w) {
  const bool row_i = in_range(i, ph), row_up = in_range(i - 1, ph);
  const bool col_j = in_range(j, pw), col_left = in_range(j - 1, pw);
  return stitch_combine(row_i && col_j ? read(i, j) : T(0),
                        row_i && col_left ? read(i, j - 1) : T(0),
                        row_up && col_j ? read(i - 1, j) : T(0),
                        row_up && col_left ? read(i - 1, j - 1) : T(0), w);
}

}  // namespace ptycho_fast
