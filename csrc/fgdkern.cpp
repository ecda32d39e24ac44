// Op schemas of the fgdkern extension, defined once. Kernels register their
// implementations per dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty Python module, so `import fgdkern._C` loads this library and runs
// the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fgdkern, m) {
  // The fg/bg masks of every level in one call (docs/fgd.md, "Masks from boxes").
  // boxes (sum K_n, 4) float32 xyxy pixels, counts (N,) int64, img_shapes (N, 2)
  // float32 (h, w), level_sizes [H0, W0, H1, W1, ...], wrap: paint like a Python
  // slice instead of clipping. Returns [fg0, bg0, fg1, bg1, ...], each
  // (N, H_l, W_l) float32.
  m.def("rasterize_boxes(Tensor boxes, Tensor counts, Tensor img_shapes, int[] level_sizes, bool wrap=False) -> Tensor[]");
  // The two fused FGD passes on CPU; contract in fgdkern/reference/fgd_passes.py.
  // temp: one temperature per level.
  m.def("fgd_stats_cpp(Tensor[] S, Tensor[] T, Tensor[] fg, Tensor[] bg, Tensor[] w_s, Tensor[] w_t, float[] temp) -> Tensor[]");
  m.def("fgd_grad_cpp(Tensor[] S, Tensor[] T, Tensor[] pix_coef, Tensor[] chan_coef, Tensor[] K) -> Tensor[]");
  // The rows of the tables these passes exchange, as the C++ kernels index
  // them: "FGD_PIX.gs_s", ..., tables and rows in the order of fgdkern/rows.py.
  m.def("fgd_rows_cpp() -> str[]");
  // FGD's small math on CPU, between the two passes (csrc/cpu/fgd_terms.cpp):
  // the (L, 4) terms and each level's y_S from the statistics and the GcBlock
  // MLP parameters (6 per level and side); then, from the terms' gradient G,
  // fgd_grad's tables and the MLP parameters' gradients:
  // [pix_coef_0.., chan_coef_0.., K_0.., g_mlp_s.., g_mlp_t..].
  m.def("fgd_terms_cpp(Tensor[] pix, Tensor[] chan, Tensor[] mlp_s, Tensor[] mlp_t, float[] eps_s, float[] eps_t, float[] temp) -> Tensor[]");
  m.def("fgd_terms_grad_cpp(Tensor G, Tensor[] pix, Tensor[] chan, Tensor[] y_S, Tensor[] fg, Tensor[] bg, Tensor[] w_s, Tensor[] w_t, Tensor[] mlp_s, Tensor[] mlp_t, float[] eps_s, float[] eps_t, float[] temp) -> Tensor[]");
  // The two imitation passes (FKD, PFI) on CPU, all levels in one call; contract
  // in fgdkern/reference/imitation_passes.py. Y may be X itself (no difference).
  // Stats return [pix_0.., chan_0..]; grad returns [dX_0..].
  m.def("imitation_stats_cpp(Tensor[] X, Tensor[] Y, Tensor[] w) -> Tensor[]");
  m.def("imitation_grad_cpp(Tensor[] X, Tensor[] Y, Tensor[] pix_coef, Tensor[] chan_coef) -> Tensor[]");
  // Their tables' rows as the C++ kernels index them: "IMIT_PIX.abs_x", ...
  m.def("imitation_rows_cpp() -> str[]");
  // The per-channel passes of CWD and PKD on CPU, all levels in one call; contract
  // in fgdkern/reference/channel_passes.py. Stats return [chan_0..]; grads [dS_0..].
  m.def("cwd_stats_cpp(Tensor[] S, Tensor[] T, float[] inv_tau) -> Tensor[]");
  m.def("cwd_grad_cpp(Tensor[] S, Tensor[] T, Tensor[] coef, float[] inv_tau) -> Tensor[]");
  m.def("pkd_stats_cpp(Tensor[] S, Tensor[] T) -> Tensor[]");
  m.def("pkd_grad_cpp(Tensor[] S, Tensor[] T, Tensor[] coef) -> Tensor[]");
  // Their tables' rows as the C++ kernels index them: "CWD_CHAN.lse_s", ...
  m.def("channel_rows_cpp() -> str[]");
  // The gradient buffers the CPU passes keep for reuse (csrc/cpu/recycle.h):
  // their bytes, and the release of those nothing else refers to.
  m.def("recycle_kept_bytes_cpp() -> int");
  m.def("recycle_release_cpp() -> ()");
  // The ISA variants of the CPU kernels (csrc/cpu/isa.h): those this CPU runs,
  // best first; the one that runs; the choice of another.
  m.def("cpu_isas_cpp() -> str[]");
  m.def("cpu_isa_cpp() -> str");
  m.def("set_cpu_isa_cpp(str name) -> ()");
}
