// The op schemas of torch.ops.ptycho_fast and the Python module entry point.
// Kernels register per device in csrc/cpu/*.cpp and csrc/cuda/*.cu; fake (meta) kernels
// and autograd are registered from Python (ptycho_fast/ops.py).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import ptycho_fast._C` loads this library, which runs the TORCH_LIBRARY blocks. The
// module itself is empty: everything is reached through torch.ops.ptycho_fast.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(ptycho_fast, m) {
  // patch[b,p,i,j] = bilinear(canvas[b], positions[b,p,0] + i, positions[b,p,1] + j),
  // zero outside the canvas. canvas (H,W) | (B,H,W); positions (P,2) | (B,P,2).
  m.def("extract_patches(Tensor canvas, Tensor positions, int patch_h, int patch_w) -> Tensor");
  // The same, written into a caller's buffer (no allocation, no page faults: reuse one
  // buffer across a loop). No autograd. Returns nothing, as torch.compile requires of
  // custom ops that mutate an input.
  m.def(
      "extract_patches_into(Tensor canvas, Tensor positions, int patch_h, int patch_w, "
      "Tensor(a!) out) -> ()");
  // The exact adjoint of extract_patches. With weights ((h,w) shared or one per patch),
  // returns (sum bilinear*w*patch, sum bilinear*w); without, (sum bilinear*patch, empty).
  m.def(
      "stitch_patches(Tensor patches, Tensor positions, int height, int width, "
      "Tensor? weights=None) -> (Tensor canvas, Tensor weight_map)");
  // Per-patch mean, population variance, min, max over the last two dims, accumulated
  // in float64. view: auto | value | amplitude | real | imag | phase.
  m.def("patch_stats(Tensor patches, str view=\"auto\") -> (Tensor mean, Tensor var, Tensor min, Tensor max)");
  // Internal (the leading underscore, like torchvision's _roi_align_backward): called by
  // the autograd formulas in ops.py, not part of the public API.
  // d/dpositions of sum(grad_patches * extract_patches(canvas, positions)), real inner
  // product over real and imaginary parts: the position gradient of both extract
  // (canvas = the data) and stitch (canvas = the incoming canvas gradient).
  m.def("_position_grad(Tensor canvas, Tensor positions, Tensor grad_patches) -> Tensor");
}
