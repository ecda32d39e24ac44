// fgdkern::fgd_terms_grad_cpp: the backward of fgd_terms_cpp, straight to the
// tables of fgd_grad (contract: csrc/cpu/fgd_terms.cpp; the math, row by row:
// docs/kernels.md, "The terms' backward"). With g = G[l] / N (g_fg, g_bg,
// g_mask, g_rela), per image and channel
//   k_fg = 2 g_fg A_C_t,  k_bg = 2 g_bg A_C_t,  k_d = 2 g_rela,
//   k_const = 2 g_rela (u - mean_d),  b_sign = d mask / d gc_s / HW,
//   g_ctx = the MLPs' backward of +-2 g_rela HW u,
// and per pixel a_sign = d mask / d gs_s / C, fgA = fg A_S_t, bgA = bg A_S_t,
// p = softmax(z) of both sides.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "fgd_terms.h"

namespace fgdkern::cpu {
namespace {

struct GradLevel {
  const float *fg, *bg, *w_s, *w_t, *y_S;  // (N, HW), (N, HW), (C), (C), (N, 2, HW)
  float *pix_coef, *chan_coef, *K;         // outputs (N, 5, HW), (N, 11, C), (N, 2)
  GcMLPGrads grads[kSides];
};

// chan_coef of image n but its g_ctx rows, and the gradient of the student's MLP
// output (g_shift, C floats).
FGDKERN_INLINE void channel_rows(const TermsLevel& lv, const GradLevel& out, const float* g,
                                 const LevelChannels& st, int64_t n, float* g_shift) {
  const int64_t C = lv.C;
  const float c_f = static_cast<float>(C), hw = static_cast<float>(lv.HW);
  const float* ch = lv.chan.const_data_ptr<float>() + n * kChanRows * C;
  const float *y_s = st.y_s.data() + n * C, *y_t = st.y_t.data() + n * C;
  float* cc = out.chan_coef + n * kChanCoefs * C;
  float* b_sign = cc + kBSign * C;
  for (int64_t c = 0; c < C; ++c) {  // d mask / d A_C_s, then through the softmax
    b_sign[c] = c_f * g[2] * sign(c_f * y_s[c] - c_f * y_t[c]);
  }
  softmax_grad(y_s, b_sign, C, 1.0f / (lv.temp * hw), b_sign);
  for (int64_t c = 0; c < C; ++c) {
    const float A_t = c_f * y_t[c], mean_d = ch[kSumD * C + c] / hw;
    const float g_sum_d = 2.0f * g[3] * st.u[n * C + c];
    cc[kKD * C + c] = 2.0f * g[3];
    cc[kKConst * C + c] = g_sum_d - 2.0f * g[3] * mean_d;
    cc[kKFg * C + c] = 2.0f * (g[0] * A_t);
    cc[kKBg * C + c] = 2.0f * (g[1] * A_t);
    cc[kWS * C + c] = out.w_s[c];
    cc[kWT * C + c] = out.w_t[c];
    cc[kCtxCoefS * C + c] = ch[kCtxS * C + c];
    cc[kCtxCoefT * C + c] = ch[kCtxT * C + c];
    g_shift[c] = g_sum_d * hw;
  }
}

// The g_ctx rows and K of every image, through both MLPs (shift = out_s - out_t),
// and the MLP parameters' gradients.
FGDKERN_INLINE void context_rows(const TermsLevel& lv, const GradLevel& out,
                                 LevelChannels& st, float* g_shift, float* scratch) {
  const int64_t N = lv.N, C = lv.C;
  const float* chan = lv.chan.const_data_ptr<float>();
  for (int side = 0; side < kSides; ++side) {
    if (side == 1) {
      for (int64_t i = 0; i < N * C; ++i) g_shift[i] = -g_shift[i];
    }
    const OutRows g_x{out.chan_coef + (side == 0 ? kGCtxS : kGCtxT) * C, kChanCoefs * C};
    GcMLPGrads grads = out.grads[side];
    gc_mlp_backward(lv.mlp[side], {chan + (side == 0 ? kCtxS : kCtxT) * C, kChanRows * C}, N,
                    st.acts(side), g_shift, grads, g_x, scratch);
  }
  for (int64_t n = 0; n < N; ++n) {
    const float* ch = chan + n * kChanRows * C;
    const float* cc = out.chan_coef + n * kChanCoefs * C;
    double K_s = 0.0, K_t = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      K_s += static_cast<double>(cc[kGCtxS * C + c]) * ch[kCtxS * C + c];
      K_t += static_cast<double>(cc[kGCtxT * C + c]) * ch[kCtxT * C + c];
    }
    out.K[2 * n] = static_cast<float>(K_s);
    out.K[2 * n + 1] = static_cast<float>(K_t);
  }
}

// pix_coef of image n.
FGDKERN_INLINE void pixel_rows(const TermsLevel& lv, const GradLevel& out, float g_mask,
                               int64_t n) {
  const int64_t HW = lv.HW;
  const float hw = static_cast<float>(HW);
  const float *ys = out.y_S + n * 2 * HW, *yt = ys + HW;
  const float* px = lv.pix.const_data_ptr<float>() + n * kPixRows * HW;
  const float *fg = out.fg + n * HW, *bg = out.bg + n * HW;
  float* pc = out.pix_coef + n * kPixCoefs * HW;
  float* a_sign = pc + kASign * HW;
  for (int64_t p = 0; p < HW; ++p) a_sign[p] = (hw * g_mask) * sign(hw * ys[p] - hw * yt[p]);
  softmax_grad(ys, a_sign, HW, 1.0f / (lv.temp * static_cast<float>(lv.C)), a_sign);
  for (int64_t p = 0; p < HW; ++p) {
    const float A = hw * yt[p];
    pc[kFgA * HW + p] = fg[p] * A;
    pc[kBgA * HW + p] = bg[p] * A;
  }
  softmax(px + kZS * HW, HW, 1.0f, pc + kPS * HW);
  softmax(px + kZT * HW, HW, 1.0f, pc + kPT * HW);
}

FGDKERN_INLINE void channel_level(const TermsLevel& lv, const GradLevel& out,
                                  const float* g) {
  LevelChannels st(lv);
  st.compute(lv);
  std::vector<float> work(lv.N * (lv.C + 2 * lv.mlp[0].H));  // g_shift (N, C), MLP scratch
  for (int64_t n = 0; n < lv.N; ++n) channel_rows(lv, out, g, st, n, work.data() + n * lv.C);
  context_rows(lv, out, st, work.data(), work.data() + lv.N * lv.C);
}

// Gradients shaped like a level's MLP parameters (every element written by
// gc_mlp_backward), and pointers into them.
GcMLPGrads new_grads(const std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads) {
  float* p[kMLPParams];
  for (int k = 0; k < kMLPParams; ++k) {
    grads.push_back(at::empty_like(params[k]));
    p[k] = grads.back().data_ptr<float>();
  }
  return {p[0], p[1], p[2], p[3], p[4], p[5]};
}

std::vector<at::Tensor> fgd_terms_grad_cpu(
    const at::Tensor& G, at::TensorList pix, at::TensorList chan, at::TensorList y_S,
    at::TensorList fg, at::TensorList bg, at::TensorList w_s, at::TensorList w_t,
    at::TensorList mlp_s, at::TensorList mlp_t, at::ArrayRef<double> eps_s,
    at::ArrayRef<double> eps_t, at::ArrayRef<double> temp) {
  const char* op = "fgd_terms_grad_cpp";
  const std::vector<TermsLevel> levels =
      make_levels(op, pix, chan, mlp_s, mlp_t, eps_s, eps_t, temp);
  const size_t L = levels.size();
  check_levels(op, L, {y_S, fg, bg, w_s, w_t});
  check_float(op, "G", 0, G, {static_cast<int64_t>(L), 4});
  const at::Tensor G_c = G.contiguous();
  std::vector<at::Tensor> keep, pix_coef, chan_coef, K, g_mlp[kSides];
  std::vector<GradLevel> out(L);
  keep.reserve(5 * L);
  for (size_t l = 0; l < L; ++l) {
    const TermsLevel& lv = levels[l];
    check_float(op, "y_S", l, y_S[l], {lv.N, 2, lv.HW});
    check_float(op, "fg", l, fg[l], {lv.N, fg[l].size(1), fg[l].size(2)});
    check_float(op, "bg", l, bg[l], fg[l].sizes());
    TORCH_CHECK(fg[l].size(1) * fg[l].size(2) == lv.HW, op, ": fg[", l, "] must have ", lv.HW,
                " pixels, got ", fg[l].sizes());
    check_float(op, "w_s", l, w_s[l], {lv.C});
    check_float(op, "w_t", l, w_t[l], {lv.C});
    for (const at::Tensor& t : {y_S[l], fg[l], bg[l], w_s[l], w_t[l]}) {
      keep.push_back(t.contiguous());
    }
    const at::Tensor* k = &keep[keep.size() - 5];
    pix_coef.push_back(at::empty({lv.N, kPixCoefs, lv.HW}, G_c.options()));
    chan_coef.push_back(at::empty({lv.N, kChanCoefs, lv.C}, G_c.options()));
    K.push_back(at::empty({lv.N, 2}, G_c.options()));
    out[l] = {k[1].const_data_ptr<float>(), k[2].const_data_ptr<float>(),
              k[3].const_data_ptr<float>(), k[4].const_data_ptr<float>(),
              k[0].const_data_ptr<float>(), pix_coef[l].data_ptr<float>(),
              chan_coef[l].data_ptr<float>(), K[l].data_ptr<float>(),
              {new_grads(lv.params[0], g_mlp[0]), new_grads(lv.params[1], g_mlp[1])}};
  }
  std::vector<float> g(4 * L);  // G / N
  for (size_t l = 0; l < L; ++l) {
    for (int k = 0; k < 4; ++k) {
      g[4 * l + k] = G_c.const_data_ptr<float>()[4 * l + k] / static_cast<float>(levels[l].N);
    }
  }
  each_level(L, [&](int64_t l) {
    on_active_isa(
        [&](auto) FGDKERN_INLINE_LAMBDA { channel_level(levels[l], out[l], g.data() + 4 * l); });
  });
  each_image(levels, [&](int64_t l, int64_t n) {
    on_active_isa(
        [&](auto) FGDKERN_INLINE_LAMBDA { pixel_rows(levels[l], out[l], g[4 * l + 2], n); });
  });
  std::vector<at::Tensor> result;
  for (auto* list : {&pix_coef, &chan_coef, &K, &g_mlp[0], &g_mlp[1]}) {
    result.insert(result.end(), list->begin(), list->end());
  }
  return result;
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("fgd_terms_grad_cpp", &fgdkern::cpu::fgd_terms_grad_cpu);
}
