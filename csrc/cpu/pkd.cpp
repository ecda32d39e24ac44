// fgdkern::pkd_stats_cpp and pkd_grad_cpp: PKD's two passes on CPU (docs/pkd.md;
// contract and notation: fgdkern/reference/channel_passes.py). Per level l,
// S[l] and T[l] (N, C, H, W) of one dtype (float32, float16 or bfloat16; any
// strides).
//   pkd_stats -> [chan_l (5, C)]: per channel over every image and pixel the
//     means mean_s, mean_t, the centred second moments m2_s, m2_t and the
//     centred cross moment m_st (the statistics of the normalisation, eq. (1));
//   pkd_grad(coef_l (4, C): a, mean_s, b, mean_t) -> [dS_l]:
//     dS = a (S - mean_s) + b (T - mean_t), in S's dtype and layout
//     (torch.empty_like), into a recycled buffer when one is free.
// A stats block sweeps its tile twice (the second time from cache): the sums
// of S and T per channel, then the moments centred on the block's means; the
// blocks of all images are merged per level in order by Chan's formula
// (partials.h). Row order: channel_rows.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "blocks.h"
#include "channel_rows.h"
#include "checks.h"
#include "partials.h"
#include "recycle.h"
#include "sweeps.h"

namespace fgdkern::cpu {
namespace {

// Block partials per channel: sums of S and T, then the moments about the
// block's means: sum u^2, sum v^2, sum u v with u = S - mean_s, v = T - mean_t.
enum Part : int { kSumS, kSumT, kM2S, kM2T, kMST, kParts };

// First sweep: per channel s and t.
struct SumLoop : Loop<0, 0, 0, 2> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&, const Vecs<0, V>&,
                              Vecs<0, V>&, Vecs<2, V>& sums) const {
    sums = {s, t};
    return V{};
  }
};

// Second sweep, with the block means: per channel u^2, v^2 and u v.
struct MomentLoop : Loop<0, 2, 0, 3> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&, const Vecs<2, V>& mean,
                              Vecs<0, V>&, Vecs<3, V>& m) const {
    const V u = s - mean[0], v = t - mean[1];
    m = {u * u, v * v, u * v};
    return V{};
  }
};

// Per element, with a, mean_s, b, mean_t per channel: dS.
struct GradLoop : Loop<0, PkdCoef::kRows, 0, 0, true> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&,
                              const Vecs<PkdCoef::kRows, V>& c, Vecs<0, V>&, Vecs<0, V>&) const {
    return c[PkdCoef::kA] * (s - c[PkdCoef::kMeanS]) + c[PkdCoef::kB] * (t - c[PkdCoef::kMeanT]);
  }
};

struct PkdLevel : Level {
  at::Tensor chan, part;  // stats: (5, C) and per block (kParts, C)
  at::Tensor coef;        // grad: (4, C)

  using Level::Level;
};

struct StatsBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const PkdLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C;
    float* part = lv.part.data_ptr<float>() + b.index * kParts * C;
    std::fill_n(part, kParts * C, 0.0f);
    const Tile<scalar_t> x = lv.tile<scalar_t>(b.n, b.p0, b.np);
    SumLoop sum;
    sum.chan_out = {part + kSumS * C, part + kSumT * C};
    sweep<kOrder, V>(sum, x, scratch);
    float* mean = scratch;  // the block's means of S, then of T
    for (int64_t i = 0; i < 2 * C; ++i) mean[i] = part[i] / static_cast<float>(b.np);
    MomentLoop moments;
    moments.chan_in = {mean, mean + C};
    moments.chan_out = {part + kM2S * C, part + kM2T * C, part + kMST * C};
    sweep<kOrder, V>(moments, x, scratch + 2 * C);
  }
};

// chan of a level: per channel the partials of every block of every image, in order.
void merge_stats(const PkdLevel& lv) {
  const int64_t C = lv.C, nb = lv.N * lv.blocks;
  std::vector<CoMoments> m(C);
  for (int64_t i = 0; i < nb; ++i) {  // block b of image n, i = n * blocks + b
    const float* q = lv.part.const_data_ptr<float>() + i * kParts * C;
    const double np = static_cast<double>(lv.block_size(i % lv.blocks));
    for (int64_t c = 0; c < C; ++c) {
      m[c].merge(np, q[kSumS * C + c], q[kSumT * C + c], q[kM2S * C + c], q[kM2T * C + c],
                 q[kMST * C + c]);
    }
  }
  float* out = lv.chan.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double row[PkdChan::kRows] = {m[c].x.mean, m[c].y.mean, m[c].x.m2, m[c].y.m2,
                                        m[c].m_xy};
    for (int r = 0; r < PkdChan::kRows; ++r) out[r * C + c] = static_cast<float>(row[r]);
  }
}

std::vector<at::Tensor> pkd_stats_cpu(at::TensorList S, at::TensorList T) {
  const char* op = "pkd_stats_cpp";
  check_levels(op, {{"S", S}, {"T", T}});
  std::vector<PkdLevel> levels;
  int64_t max_C = 0;
  for (size_t l = 0; l < S.size(); ++l) {  // each level, checked, its outputs allocated
    check_features(op, S[l], T[l], l);
    PkdLevel lv(S[l], T[l], at::Tensor());
    const at::TensorOptions f32 = S[l].options().dtype(at::kFloat);
    lv.chan = at::empty({PkdChan::kRows, lv.C}, f32);
    lv.part = at::empty({lv.N * lv.blocks, kParts, lv.C}, f32);
    max_C = std::max(max_C, lv.C);
    levels.push_back(lv);
  }
  for_each_block(levels, 2 * max_C, StatsBlock{});
  parallel_each(static_cast<int64_t>(levels.size()), [&](int64_t l) { merge_stats(levels[l]); });
  return outputs(levels, &PkdLevel::chan);
}

struct GradBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const PkdLevel& lv, const Block& b, float* scratch) const {
    const float* coef = lv.coef.const_data_ptr<float>();
    GradLoop f;
    for (int r = 0; r < PkdCoef::kRows; ++r) f.chan_in[r] = coef + r * lv.C;  // each coef row
    sweep<kOrder, V>(f, lv.tile<scalar_t>(b.n, b.p0, b.np), scratch);
  }
};

std::vector<at::Tensor> pkd_grad_cpu(at::TensorList S, at::TensorList T, at::TensorList coef) {
  const char* op = "pkd_grad_cpp";
  check_levels(op, {{"S", S}, {"T", T}, {"coef", coef}});
  static Recycler dS_buffers(1);
  const Recycler::Call call{dS_buffers};
  std::vector<PkdLevel> levels;
  for (size_t l = 0; l < S.size(); ++l) {  // each level, checked, its dS allocated
    check_features(op, S[l], T[l], l);
    PkdLevel lv(S[l], T[l], dS_buffers.empty_like(S[l]));
    check_float(op, "coef", l, coef[l], {PkdCoef::kRows, lv.C});
    lv.coef = coef[l].contiguous();
    levels.push_back(lv);
  }
  for_each_block(levels, 0, GradBlock{});
  return outputs(levels, &PkdLevel::dS);
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("pkd_stats_cpp", &fgdkern::cpu::pkd_stats_cpu);
  m.impl("pkd_grad_cpp", &fgdkern::cpu::pkd_grad_cpu);
}
