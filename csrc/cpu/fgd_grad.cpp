// fgdkern::fgd_grad_cpp: the FGD gradient pass on CPU (contract and notation:
// fgdkern/reference/fgd_passes.py; rows: docs/kernels.md, "The row tables").
// Reads S, T and the coefficient tables pix_coef (N, 5, HW), chan_coef
// (N, 11, C), K (N, 2); writes dS (shape, dtype and strides of S) and the
// conv_mask weight gradients dw_s, dw_t (C,), summed over S - ctx_s and
// T - ctx_t (docs/kernels.md, "The row tables").
//
// Each block sweeps its tile twice (the second time from cache): first
// gp_s, gp_t per pixel, then dS and the block's partial dw_s, dw_t, which are
// summed per level in block order (partials.h). dS is written into a recycled
// buffer when one is free (recycle.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "blocks.h"
#include "checks.h"
#include "fgd_math.h"
#include "fgd_rows.h"
#include "partials.h"
#include "recycle.h"
#include "sweeps.h"

namespace fgdkern::cpu {
namespace {

struct GradLevel : Level {
  at::Tensor pix_coef, chan_coef, K;  // (N, 5, HW), (N, 11, C), (N, 2) float32, contiguous
  at::Tensor dw_s, dw_t;              // outputs (C,)
  at::Tensor part;                    // per block: dz_s (S - ctx_s), dz_t (T - ctx_t) summed

  using Level::Level;
};

// Reads the block's tile of S and T twice; writes its tile of dS and its
// partial rows of dw_s, dw_t. Between the sweeps, per pixel:
// dz_s = p_s (gp_s - K_s), dz_t = p_t (gp_t - K_t).
struct GradBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const GradLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C, HW = lv.HW, np = b.np;
    const Tile<scalar_t> x = lv.tile<scalar_t>(b.n, b.p0, np);
    const float* pc = lv.pix_coef.const_data_ptr<float>() + b.n * kPixCoefs * HW + b.p0;
    const float* cc = lv.chan_coef.const_data_ptr<float>() + b.n * kChanCoefs * C;
    const float* K = lv.K.const_data_ptr<float>() + 2 * b.n;
    float* part = lv.part.data_ptr<float>() + b.index * 2 * C;
    float *dz_s = scratch, *dz_t = scratch + np;
    std::fill_n(scratch, 2 * np, 0.0f);
    std::fill_n(part, 2 * C, 0.0f);

    GradRows rows;
    rows.chan_in = {cc + kGCtxS * C, cc + kGCtxT * C};
    rows.pix_out = {dz_s, dz_t};
    float* sweep_space = scratch + 2 * np;
    sweep<kOrder, V>(rows, x, sweep_space);
    for (int64_t p = 0; p < np; ++p) {
      dz_s[p] = pc[kPS * HW + p] * (dz_s[p] - K[0]);
      dz_t[p] = pc[kPT * HW + p] * (dz_t[p] - K[1]);
    }

    GradCols cols;
    cols.pix_in = {pc + kASign * HW, pc + kFgA * HW, pc + kBgA * HW, pc + kPS * HW, dz_s, dz_t};
    cols.chan_in = {cc + kBSign * C, cc + kKD * C,    cc + kKConst * C,   cc + kKFg * C,
                    cc + kKBg * C,   cc + kGCtxS * C, cc + kWS * C,       cc + kCtxCoefS * C,
                    cc + kCtxCoefT * C};
    cols.chan_out = {part, part + C};
    sweep<kOrder, V>(cols, x, sweep_space);
  }
};

// dw_s, dw_t of a level: its blocks' partial rows summed in block order, in double.
void merge_grad(const GradLevel& lv) {
  const int64_t C = lv.C;
  std::vector<double> sum(2 * C, 0.0);
  sum_blocks(lv.part.const_data_ptr<float>(), lv.N * lv.blocks, 2, C,
             [](int64_t, int) { return 1.0; }, sum.data());
  float *dw_s = lv.dw_s.data_ptr<float>(), *dw_t = lv.dw_t.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    dw_s[c] = static_cast<float>(sum[c]);
    dw_t[c] = static_cast<float>(sum[C + c]);
  }
}

// Level l of the op's arguments, checked, with its outputs allocated.
GradLevel make_level(const char* op, size_t l, const at::Tensor& S, const at::Tensor& T,
                     const at::Tensor& pix_coef, const at::Tensor& chan_coef,
                     const at::Tensor& K, Recycler& dS_buffers) {
  check_features(op, S, T, l);
  GradLevel lv(S, T, dS_buffers.empty_like(S));
  const int64_t N = lv.N, C = lv.C;
  check_float(op, "pix_coef", l, pix_coef, {N, kPixCoefs, lv.HW});
  check_float(op, "chan_coef", l, chan_coef, {N, kChanCoefs, C});
  check_float(op, "K", l, K, {N, 2});
  lv.pix_coef = pix_coef.contiguous();
  lv.chan_coef = chan_coef.contiguous();
  lv.K = K.contiguous();
  const at::TensorOptions f32 = S.options().dtype(at::kFloat);
  lv.dw_s = at::empty({C}, f32);
  lv.dw_t = at::empty({C}, f32);
  lv.part = at::empty({N * lv.blocks, 2, C}, f32);
  return lv;
}

std::vector<at::Tensor> fgd_grad_cpu(at::TensorList S, at::TensorList T, at::TensorList pix_coef,
                                     at::TensorList chan_coef, at::TensorList K) {
  const char* op = "fgd_grad_cpp";
  check_levels(op, S.size(), {T, pix_coef, chan_coef, K});
  static Recycler dS_buffers;
  const Recycler::Call call{dS_buffers};
  std::vector<GradLevel> levels;
  int64_t max_C = 0;
  for (size_t l = 0; l < S.size(); ++l) {
    levels.push_back(make_level(op, l, S[l], T[l], pix_coef[l], chan_coef[l], K[l], dS_buffers));
    max_C = std::max(max_C, levels.back().C);
  }
  const int64_t sweep_space = std::max(sweep_scratch<GradRows>(max_C, kMaxBlock),
                                      sweep_scratch<GradCols>(max_C, kMaxBlock));
  for_each_block(levels, 2 * kMaxBlock + sweep_space, GradBlock{});
  parallel_each(static_cast<int64_t>(levels.size()), [&](int64_t l) { merge_grad(levels[l]); });
  return outputs(levels, &GradLevel::dS, &GradLevel::dw_s, &GradLevel::dw_t);
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("fgd_grad_cpp", &fgdkern::cpu::fgd_grad_cpu);
}
