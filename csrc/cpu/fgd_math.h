// The per-element math of the fused FGD passes on CPU: the loops of the four
// sweeps (csrc/cpu/fgd_stats.cpp: StatsRows, StatsCols; csrc/cpu/fgd_grad.cpp:
// GradRows, GradCols). Each is a Loop of sweeps.h: per element it gets s, t,
// its per-pixel and per-channel inputs, and returns dS and sums (notation:
// fgdkern/reference/fgd_passes.py; D = S - T).
#pragma once

#include "sweeps.h"
#include "vec.h"

namespace fgdkern::cpu {

// fgd_stats, first sweep: per pixel |S|, |T|, w_s S, w_t T (-> gs, z);
// per channel |S|, |T|, D (-> gc, sum_d). Only gs_s, gs_t are compensated
// (they feed softmax(gs / temp)); z_s, z_t are plain sums, which keep
// tests/losses/test_fgd_precision.py passing (sweeps.h, kCompensated).
struct StatsRows : Loop<0, 2, 4, 3, false, row_set(0, 1)> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&, const Vecs<2, V>& w,
                              Vecs<4, V>& pix, Vecs<3, V>& chan) const {
    const V abs_s = vabs(s), abs_t = vabs(t);
    pix = {abs_s, abs_t, w[0] * s, w[1] * t};
    chan = {abs_s, abs_t, s - t};
    return V{};
  }
};

// fgd_stats, second sweep, with per-pixel weights e_s = exp(z_s - m),
// e_t = exp(z_t - m), a_fg = fg exp(gs_t / temp - m), a_bg likewise, and the
// block mean of D per channel: per channel ctx_s, ctx_t, m2_d, x_fg, x_bg.
struct StatsCols : Loop<4, 1, 0, 5> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<4, V>& e,
                              const Vecs<1, V>& mean_d, Vecs<0, V>&, Vecs<5, V>& chan) const {
    const V D = s - t, centred = D - mean_d[0], D2 = D * D;
    chan = {e[0] * s, e[1] * t, centred * centred, e[2] * D2, e[3] * D2};
    return V{};
  }
};

// fgd_grad, first sweep: per pixel gp_s = g_ctx_s . S, gp_t = g_ctx_t . T, plain
// sums (the precision tests pass without compensation).
struct GradRows : Loop<0, 2, 2, 0, false, row_set()> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<0, V>&, const Vecs<2, V>& g_ctx,
                              Vecs<2, V>& gp, Vecs<0, V>&) const {
    gp = {g_ctx[0] * s, g_ctx[1] * t};
    return V{};
  }
};

// fgd_grad, second sweep: dS, and per channel dz_s (S - ctx_s), dz_t (T - ctx_t)
// (-> dw_s, dw_t; centred on the contexts, fgdkern/reference/fgd_passes.py).
// Pixel inputs: a_sign, fgA, bgA, p_s, dz_s, dz_t; channel inputs: b_sign,
// k_d, k_const, k_fg, k_bg, g_ctx_s, w_s, ctx_s, ctx_t.
struct GradCols : Loop<6, 9, 0, 2, true> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& s, const V& t, const Vecs<6, V>& px, const Vecs<9, V>& ch,
                              Vecs<0, V>&, Vecs<2, V>& dw) const {
    const auto& [a_sign, fgA, bgA, p_s, dz_s, dz_t] = px;
    const auto& [b_sign, k_d, k_const, k_fg, k_bg, g_ctx_s, w_s, ctx_s, ctx_t] = ch;
    dw = {dz_s * (s - ctx_s), dz_t * (t - ctx_t)};
    return vsign(s) * (a_sign + b_sign) + (s - t) * (k_d + k_fg * fgA + k_bg * bgA) + k_const +
           p_s * g_ctx_s + w_s * dz_s;
  }
};

}  // namespace fgdkern::cpu
