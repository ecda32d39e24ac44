// fgdkern::cwd_stats_cpp and cwd_grad_cpp: CWD's two passes on CPU (docs/cwd.md;
// contract and notation: fgdkern/reference/channel_passes.py). Per level l,
// S[l] and T[l] (N, C, H, W) of one dtype (float32, float16 or bfloat16; any
// strides) and inv_tau[l] = 1 / tau.
//   cwd_stats -> [chan_l (N, 3, C)]: per (n, c) lse_s, lse_t (log-sum-exps over
//     the pixels of S / tau and T / tau) and kl = KL(p_t || p_s) (eq. (3));
//   cwd_grad(coef_l (N, 3, C): lse_s, lse_t, k) -> [dS_l]:
//     dS = k (exp(S / tau - lse_s) - exp(T / tau - lse_t)), in S's dtype and
//     layout (torch.empty_like), into a recycled buffer when one is free.
// A stats block sweeps its tile twice (the second time from cache): the
// per-channel maxima of S / tau and T / tau, then the sums of exp(x - max) and
// the teacher-weighted difference; blocks are merged per image in block order
// as an online softmax (partials.h). Row order: channel_rows.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "blocks.h"
#include "channel_rows.h"
#include "checks.h"
#include "partials.h"
#include "recycle.h"
#include "sweeps.h"

namespace fgdkern::cpu {
namespace {

// Block partials per channel: the maxima m_s, m_t of S / tau and T / tau, then with
// x_s = S / tau - m_s and x_t = T / tau - m_t: e_s = sum exp(x_s), e_t = sum exp(x_t)
// and w = sum exp(x_t) (x_t - x_s). kl is formed from these shifted values: they are
// what the exponentials see, so a 1x1 map or S = T gives exactly 0, and terms of the
// size of S / tau itself never cancel.
enum Part : int { kMaxS, kMaxT, kSumS, kSumT, kW, kParts };

// First sweep: per channel max of s / tau and t / tau.
struct MaxLoop : Loop<0, 0, 0, 2, false, row_set(), row_set(0, 1)> {
  float inv_tau;
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&, const Vecs<0, V>&,
                              Vecs<0, V>&, Vecs<2, V>& m) const {
    m = {s * inv_tau, t * inv_tau};
    return V{};
  }
};

// Second sweep, with the block maxima m_s, m_t: per channel e_s, e_t and w.
struct SumLoop : Loop<0, 2, 0, 3> {
  float inv_tau;
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&, const Vecs<2, V>& m,
                              Vecs<0, V>&, Vecs<3, V>& sums) const {
    const V x_s = s * inv_tau - m[0], x_t = t * inv_tau - m[1], e_t = vexp(x_t);
    sums = {vexp(x_s), e_t, e_t * (x_t - x_s)};
    return V{};
  }
};

// Per element, with the image's lse_s, lse_t and k per channel: dS.
struct GradLoop : Loop<0, CwdCoef::kRows, 0, 0, true> {
  float inv_tau;
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&,
                              const Vecs<CwdCoef::kRows, V>& c, Vecs<0, V>&, Vecs<0, V>&) const {
    const V p_s = vexp(s * inv_tau - c[CwdCoef::kLseS]);
    return c[CwdCoef::kK] * (p_s - vexp(t * inv_tau - c[CwdCoef::kLseT]));
  }
};

struct CwdLevel : Level {
  float inv_tau;
  at::Tensor chan, part;  // stats: (N, 3, C) and per block (kParts, C)
  at::Tensor coef;        // grad: (N, 3, C)

  using Level::Level;
};

struct StatsBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const CwdLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C;
    float* part = lv.part.data_ptr<float>() + b.index * kParts * C;
    std::fill_n(part, 2 * C, -INFINITY);
    std::fill_n(part + 2 * C, (kParts - 2) * C, 0.0f);
    const Tile<scalar_t> x = lv.tile<scalar_t>(b.n, b.p0, b.np);
    MaxLoop max;
    max.inv_tau = lv.inv_tau;
    max.chan_out = {part + kMaxS * C, part + kMaxT * C};
    sweep<kOrder, V>(max, x, scratch);
    SumLoop sum;
    sum.inv_tau = lv.inv_tau;
    sum.chan_in = {part + kMaxS * C, part + kMaxT * C};
    sum.chan_out = {part + kSumS * C, part + kSumT * C, part + kW * C};
    sweep<kOrder, V>(sum, x, scratch);
  }
};

// chan of image n: per channel its blocks' sums rescaled to one max, in block order
// (w shifted by the change of both maxima).
void merge_stats(const CwdLevel& lv, int64_t n) {
  const int64_t C = lv.C, nb = lv.blocks;
  const float* part = lv.part.const_data_ptr<float>() + n * nb * kParts * C;
  float* out = lv.chan.data_ptr<float>() + n * CwdChan::kRows * C;
  for (int64_t c = 0; c < C; ++c) {
    const auto at = [&](int64_t b, int row) { return part[(b * kParts + row) * C + c]; };
    double m_s = -INFINITY, m_t = -INFINITY;
    for (int64_t b = 0; b < nb; ++b) {
      m_s = std::fmax(m_s, at(b, kMaxS));
      m_t = std::fmax(m_t, at(b, kMaxT));
    }
    double e_s = 0.0, e_t = 0.0, w = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const double d_s = at(b, kMaxS) - m_s, d_t = at(b, kMaxT) - m_t, f_t = std::exp(d_t);
      e_s += std::exp(d_s) * at(b, kSumS);
      e_t += f_t * at(b, kSumT);
      w += f_t * (at(b, kW) + at(b, kSumT) * (d_t - d_s));
    }
    out[CwdChan::kLseS * C + c] = static_cast<float>(m_s + std::log(e_s));
    out[CwdChan::kLseT * C + c] = static_cast<float>(m_t + std::log(e_t));
    out[CwdChan::kKl * C + c] = static_cast<float>(w / e_t - std::log(e_t) + std::log(e_s));
  }
}

std::vector<at::Tensor> cwd_stats_cpu(at::TensorList S, at::TensorList T,
                                      at::ArrayRef<double> inv_tau) {
  const char* op = "cwd_stats_cpp";
  check_levels(op, {{"S", S}, {"T", T}});
  check_positive_per_level(op, "inv_tau", S.size(), inv_tau);
  std::vector<CwdLevel> levels;
  for (size_t l = 0; l < S.size(); ++l) {  // each level, checked, its outputs allocated
    check_features(op, S[l], T[l], l);
    CwdLevel lv(S[l], T[l], at::Tensor());
    lv.inv_tau = static_cast<float>(inv_tau[l]);
    const at::TensorOptions f32 = S[l].options().dtype(at::kFloat);
    lv.chan = at::empty({lv.N, CwdChan::kRows, lv.C}, f32);
    lv.part = at::empty({lv.N * lv.blocks, kParts, lv.C}, f32);
    levels.push_back(lv);
  }
  for_each_block(levels, 0, StatsBlock{});
  for_each_image(levels, merge_stats);
  return outputs(levels, &CwdLevel::chan);
}

struct GradBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const CwdLevel& lv, const Block& b, float* scratch) const {
    const float* coef = lv.coef.const_data_ptr<float>() + b.n * CwdCoef::kRows * lv.C;
    GradLoop f;
    f.inv_tau = lv.inv_tau;
    for (int r = 0; r < CwdCoef::kRows; ++r) f.chan_in[r] = coef + r * lv.C;  // each coef row
    sweep<kOrder, V>(f, lv.tile<scalar_t>(b.n, b.p0, b.np), scratch);
  }
};

std::vector<at::Tensor> cwd_grad_cpu(at::TensorList S, at::TensorList T, at::TensorList coef,
                                     at::ArrayRef<double> inv_tau) {
  const char* op = "cwd_grad_cpp";
  check_levels(op, {{"S", S}, {"T", T}, {"coef", coef}});
  check_positive_per_level(op, "inv_tau", S.size(), inv_tau);
  static Recycler dS_buffers(1);
  const Recycler::Call call{dS_buffers};
  std::vector<CwdLevel> levels;
  for (size_t l = 0; l < S.size(); ++l) {  // each level, checked, its dS allocated
    check_features(op, S[l], T[l], l);
    CwdLevel lv(S[l], T[l], dS_buffers.empty_like(S[l]));
    check_float(op, "coef", l, coef[l], {lv.N, CwdCoef::kRows, lv.C});
    lv.coef = coef[l].contiguous();
    lv.inv_tau = static_cast<float>(inv_tau[l]);
    levels.push_back(lv);
  }
  for_each_block(levels, 0, GradBlock{});
  return outputs(levels, &CwdLevel::dS);
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("cwd_stats_cpp", &fgdkern::cpu::cwd_stats_cpu);
  m.impl("cwd_grad_cpp", &fgdkern::cpu::cwd_grad_cpu);
}
