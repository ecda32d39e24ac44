// fgdkern::fgd_stats_cpp: the FGD statistics pass on CPU (contract and
// notation: fgdkern/reference/fgd_passes.py; rows: docs/kernels.md, "The row
// tables"). Reads S, T, the masks fg, bg, the conv_mask weights w_s, w_t
// and one temperature per level; writes per image the pixel rows pix
// (N, 4, HW) and the channel rows chan (N, 8, C).
//
// Each block sweeps its tile twice (the second time from cache): first the
// sums over channels per pixel and the plain sums over pixels per channel,
// then, with block-local softmax weights, the weighted sums per channel. The
// block partials are merged per image in block order (partials.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "blocks.h"
#include "checks.h"
#include "fgd_math.h"
#include "fgd_rows.h"
#include "partials.h"
#include "sweeps.h"

namespace fgdkern::cpu {
namespace {

struct StatsLevel : Level {
  at::Tensor fg, bg, w_s, w_t;  // (N, HW), (N, HW), (C,), (C,) float32, contiguous
  float temp;
  at::Tensor pix, chan;         // outputs (N, 4, HW), (N, 8, C)
  at::Tensor part;              // per block: the 8 channel rows of its pixels
  mutable std::vector<SoftmaxPart> soft;  // per block: z_s, z_t, gs_t / temp

  using Level::Level;
};

// Between the two sweeps of a stats block: gs = sum / C, then the block-local
// softmax weights e_s, e_t of z_s, z_t and a_fg = fg a, a_bg = bg a with
// a = exp(gs_t / temp - m): rows of e, np floats each.
void block_weights(const StatsLevel& lv, const Block& b, float* pix, float* e,
                   SoftmaxPart* soft) {
  const int64_t HW = lv.HW, np = b.np;
  float *gs_s = pix + kGsS * HW, *gs_t = pix + kGsT * HW;
  float *a_fg = e + 2 * np, *a_bg = e + 3 * np;
  const float* fg = lv.fg.const_data_ptr<float>() + b.n * HW + b.p0;
  const float* bg = lv.bg.const_data_ptr<float>() + b.n * HW + b.p0;
  const float C = static_cast<float>(lv.C);
  for (int64_t p = 0; p < np; ++p) {
    gs_s[p] /= C;
    gs_t[p] /= C;
    a_fg[p] = gs_t[p] / lv.temp;
  }
  soft[0] = softmax_weights(pix + kZS * HW, np, e);
  soft[1] = softmax_weights(pix + kZT * HW, np, e + np);
  soft[2] = softmax_weights(a_fg, np, a_fg);
  for (int64_t p = 0; p < np; ++p) {
    a_bg[p] = bg[p] * a_fg[p];
    a_fg[p] *= fg[p];
  }
}

// Reads the block's tile of S and T twice; writes its 4 pixel rows and its
// partial channel rows (gc_s, gc_t, sum_d, then ctx_s, ctx_t, m2_d, x_fg, x_bg
// with block-local softmax weights and D centred on the block mean).
struct StatsBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const StatsLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C, HW = lv.HW, np = b.np;
    const Tile<scalar_t> x = lv.tile<scalar_t>(b.n, b.p0, np);
    float* pix = lv.pix.data_ptr<float>() + b.n * kPixRows * HW + b.p0;
    float* part = lv.part.data_ptr<float>() + b.index * kChanRows * C;
    for (int r = 0; r < kPixRows; ++r) std::fill_n(pix + r * HW, np, 0.0f);
    std::fill_n(part, kChanRows * C, 0.0f);

    StatsRows rows;
    rows.chan_in = {lv.w_s.const_data_ptr<float>(), lv.w_t.const_data_ptr<float>()};
    rows.pix_out = {pix + kGsS * HW, pix + kGsT * HW, pix + kZS * HW, pix + kZT * HW};
    rows.chan_out = {part + kGcS * C, part + kGcT * C, part + kSumD * C};
    float* e = scratch;  // e_s, e_t, a_fg, a_bg
    float* mean_d = scratch + 4 * np;
    float* sweep_space = mean_d + C;
    sweep<kOrder, V>(rows, x, sweep_space);

    block_weights(lv, b, pix, e, lv.soft.data() + 3 * b.index);
    for (int64_t c = 0; c < C; ++c) mean_d[c] = part[kSumD * C + c] / static_cast<float>(np);

    StatsCols cols;
    cols.pix_in = {e, e + np, e + 2 * np, e + 3 * np};
    cols.chan_in = {mean_d};
    cols.chan_out = {part + kCtxS * C, part + kCtxT * C, part + kM2D * C, part + kXFg * C,
                     part + kXBg * C};
    sweep<kOrder, V>(cols, x, sweep_space);
  }
};

// chan of image n: its blocks' partial rows merged in block order, in double;
// the softmax-weighted rows rescaled to one softmax, m2_d by Chan's formula.
void merge_stats(const StatsLevel& lv, int64_t n) {
  const int64_t C = lv.C, HW = lv.HW, nb = lv.blocks;
  const float* part = lv.part.const_data_ptr<float>() + n * nb * kChanRows * C;
  const SoftmaxPart* soft = lv.soft.data() + n * nb * 3;
  std::vector<double> f_s(nb), f_t(nb), f_a(nb);
  softmax_factors(soft + 0, 3, nb, f_s.data());
  softmax_factors(soft + 1, 3, nb, f_t.data());
  softmax_factors(soft + 2, 3, nb, f_a.data());
  std::vector<double> sum(kChanRows * C, 0.0);
  sum_blocks(part, nb, kChanRows, C, [&](int64_t b, int r) {
    const double weight[kChanRows] = {1.0, 1.0, f_s[b], f_t[b], 1.0, 0.0, f_a[b], f_a[b]};
    return weight[r];
  }, sum.data());
  std::vector<Moments> d(C);
  for (int64_t b = 0; b < nb; ++b) {
    const float* q = part + b * kChanRows * C;
    const double np = static_cast<double>(lv.block_size(b));
    for (int64_t c = 0; c < C; ++c) d[c].merge(np, q[kSumD * C + c], q[kM2D * C + c]);
  }
  for (int64_t c = 0; c < C; ++c) sum[kM2D * C + c] = d[c].m2;
  const double scale[kChanRows] = {1.0 / HW, 1.0 / HW, 1.0, 1.0, 1.0, 1.0, double(HW), double(HW)};
  float* out = lv.chan.data_ptr<float>() + n * kChanRows * C;
  for (int r = 0; r < kChanRows; ++r) {
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = static_cast<float>(sum[r * C + c] * scale[r]);
  }
}

// Level l of the op's arguments, checked, with its outputs allocated.
StatsLevel make_level(const char* op, size_t l, const at::Tensor& S, const at::Tensor& T,
                      const at::Tensor& fg, const at::Tensor& bg, const at::Tensor& w_s,
                      const at::Tensor& w_t, double temp) {
  check_features(op, S, T, l);
  StatsLevel lv(S, T, at::Tensor());
  const int64_t N = lv.N, C = lv.C, HW = lv.HW;
  check_float(op, "fg", l, fg, {N, S.size(2), S.size(3)});
  check_float(op, "bg", l, bg, {N, S.size(2), S.size(3)});
  check_float(op, "w_s", l, w_s, {C});
  check_float(op, "w_t", l, w_t, {C});
  lv.fg = fg.contiguous();
  lv.bg = bg.contiguous();
  lv.w_s = w_s.contiguous();
  lv.w_t = w_t.contiguous();
  lv.temp = static_cast<float>(temp);
  lv.pix = at::empty({N, kPixRows, HW}, S.options().dtype(at::kFloat));
  lv.chan = at::empty({N, kChanRows, C}, lv.pix.options());
  lv.part = at::empty({N * lv.blocks, kChanRows, C}, lv.pix.options());
  lv.soft.resize(N * lv.blocks * 3);
  return lv;
}

std::vector<at::Tensor> fgd_stats_cpu(at::TensorList S, at::TensorList T, at::TensorList fg,
                                      at::TensorList bg, at::TensorList w_s, at::TensorList w_t,
                                      at::ArrayRef<double> temp) {
  const char* op = "fgd_stats_cpp";
  check_levels(op, S.size(), {T, fg, bg, w_s, w_t});
  check_positive_per_level(op, "temp", S.size(), temp);
  std::vector<StatsLevel> levels;
  int64_t max_C = 0;
  for (size_t l = 0; l < S.size(); ++l) {
    levels.push_back(make_level(op, l, S[l], T[l], fg[l], bg[l], w_s[l], w_t[l], temp[l]));
    max_C = std::max(max_C, levels.back().C);
  }
  const int64_t sweep_space = std::max(sweep_scratch<StatsRows>(max_C, kMaxBlock),
                                      sweep_scratch<StatsCols>(max_C, kMaxBlock));
  for_each_block(levels, 4 * kMaxBlock + max_C + sweep_space, StatsBlock{});
  for_each_image(levels, merge_stats);
  return outputs(levels, &StatsLevel::pix, &StatsLevel::chan);
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("fgd_stats_cpp", &fgdkern::cpu::fgd_stats_cpu);
}
