// fgdkern::imitation_grad_cpp: the gradient pass of the imitation losses (FKD,
// PFI) on CPU; contract and notation: fgdkern/reference/imitation_passes.py.
// Reads, per level l, X[l] and Y[l] (N, C, H, W) of one dtype (float32,
// float16 or bfloat16; any strides) and the float32 coefficient tables
// pix_coef[l] (N, 3, HW), rows a, b, s, and chan_coef[l] (N, 3, C), rows w, b, s
// (row order: imitation_rows.h, as fgdkern/rows.py). Writes and returns
// [dX_0..dX_{L-1}]:
//     dX[c, ij] = a[ij] w[c] (X - Y) + b[ij] + b[c] + sign(X) (s[ij] + s[c])
// in the dtype of X, with X's strides when X is dense (channels_last stays
// channels_last; a strided view gets a contiguous dX, as torch.empty_like).
// The autograd op runs it for dX, and for dY with X and Y swapped. dX is
// written into a recycled buffer when one is free (recycle.h).
//
// One sweep per block (blocks.h, sweeps.h) reads its tile of X and Y once and
// writes its tile of dX; there is nothing to sum, so every element is the
// same bits whatever the thread count. Math in float32, rounded once to X's
// dtype; float32 denormals are read and written as 0 (blocks.h flushes them),
// so a denormal X has sign 0, like an exact 0.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "blocks.h"
#include "checks.h"
#include "imitation_rows.h"
#include "recycle.h"
#include "sweeps.h"

namespace fgdkern::cpu {
namespace {

using PixCoef = ImitPixCoef;
using ChanCoef = ImitChanCoef;

// Per element x = X[c, p], y = Y[c, p] with the pixel's a, b, s and the
// channel's w, b, s: dX[c, p], in the contract's order of operations.
struct GradLoop : Loop<PixCoef::kRows, ChanCoef::kRows, 0, 0, true> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& x, const V& y, const Vecs<PixCoef::kRows, V>& p,
                              const Vecs<ChanCoef::kRows, V>& c, Vecs<0, V>&, Vecs<0, V>&) const {
    return p[PixCoef::kA] * c[ChanCoef::kW] * (x - y) + p[PixCoef::kB] + c[ChanCoef::kB] +
           vsign(x) * (p[PixCoef::kS] + c[ChanCoef::kS]);
  }
};

struct GradLevel : Level {
  at::Tensor pix_coef, chan_coef;  // (N, 3, HW), (N, 3, C) float32, contiguous

  using Level::Level;
};

// Reads the block's tile of X and Y once; writes its tile of dX.
struct GradBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const GradLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C, HW = lv.HW;
    const float* pc = lv.pix_coef.const_data_ptr<float>() + b.n * PixCoef::kRows * HW + b.p0;
    const float* cc = lv.chan_coef.const_data_ptr<float>() + b.n * ChanCoef::kRows * C;
    GradLoop f;
    for (int r = 0; r < PixCoef::kRows; ++r) f.pix_in[r] = pc + r * HW;    // each pixel row
    for (int r = 0; r < ChanCoef::kRows; ++r) f.chan_in[r] = cc + r * C;   // each channel row
    sweep<kOrder, V>(f, lv.tile<scalar_t>(b.n, b.p0, b.np), scratch);
  }
};

// Level l of the op's arguments, checked, with dX allocated.
GradLevel make_level(const char* op, size_t l, const at::Tensor& X, const at::Tensor& Y,
                     const at::Tensor& pix_coef, const at::Tensor& chan_coef,
                     Recycler& dX_buffers) {
  check_features(op, X, Y, l, "X", "Y");
  GradLevel lv(X, Y, dX_buffers.empty_like(X));
  check_float(op, "pix_coef", l, pix_coef, {lv.N, PixCoef::kRows, lv.HW});
  check_float(op, "chan_coef", l, chan_coef, {lv.N, ChanCoef::kRows, lv.C});
  lv.pix_coef = pix_coef.contiguous();
  lv.chan_coef = chan_coef.contiguous();
  return lv;
}

std::vector<at::Tensor> imitation_grad_cpu(at::TensorList X, at::TensorList Y,
                                           at::TensorList pix_coef, at::TensorList chan_coef) {
  const char* op = "imitation_grad_cpp";
  check_levels(op, {{"X", X}, {"Y", Y}, {"pix_coef", pix_coef}, {"chan_coef", chan_coef}});
  static Recycler dX_buffers(2);  // a backward runs it for dX, then for dY
  const Recycler::Call call{dX_buffers};
  std::vector<GradLevel> levels;
  for (size_t l = 0; l < X.size(); ++l) {  // each level, checked, its dX allocated
    levels.push_back(make_level(op, l, X[l], Y[l], pix_coef[l], chan_coef[l], dX_buffers));
  }
  for_each_block(levels, sweep_scratch<GradLoop>(0, kMaxBlock), GradBlock{});
  return outputs(levels, &GradLevel::dS);
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("imitation_grad_cpp", &fgdkern::cpu::imitation_grad_cpu);
}
