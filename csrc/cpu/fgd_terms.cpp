// fgdkern::fgd_terms_cpp and fgdkern::fgd_terms_grad_cpp: FGD's small math on
// CPU, everything between the two passes (docs/kernels.md, "The terms' backward";
// its contract in PyTorch: fgdkern/reference/fgd_small_math.py).
//
// fgd_terms_cpp reads the statistics pix (N, 4, HW), chan (N, 8, C) of every
// level and the GcBlock MLP parameters of both sides; it writes the (L, 4)
// unweighted terms fg, bg, mask, rela, and per level y_S (N, 2, HW), the
// student's and the teacher's softmax(gs / temp) over pixels.
// fgd_terms_grad_cpp reads the gradient G (L, 4) of the terms, the same
// inputs, y_S, the masks and the conv_mask weights; it writes fgd_grad's
// tables pix_coef (N, 5, HW), chan_coef (N, 11, C), K (N, 2) per level and
// the gradients of the MLP parameters. The per-channel values it needs from
// the forward (the channel softmaxes, the MLP activations) it computes again:
// that reads each MLP matrix once more, which the backward reads anyway.
// The channel math runs level by level in parallel, the pixel math image by
// image; sums over images are added in order.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fgd_terms.h"

namespace fgdkern::cpu {
namespace {

// Per image n of a level, the terms over channels: part[4 n ..] = fg, bg, the
// channel half of mask, rela.
FGDKERN_INLINE void channel_terms(const TermsLevel& lv, double* part) {
  const int64_t C = lv.C;
  const float c_f = static_cast<float>(C), hw = static_cast<float>(lv.HW);
  LevelChannels st(lv);
  st.compute(lv);
  for (int64_t n = 0; n < lv.N; ++n) {
    const float* ch = lv.chan.const_data_ptr<float>() + n * kChanRows * C;
    const float *y_s = st.y_s.data() + n * C, *y_t = st.y_t.data() + n * C;
    const float* u = st.u.data() + n * C;
    double fg = 0.0, bg = 0.0, mask = 0.0, rela = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const float A_t = c_f * y_t[c];
      fg += A_t * ch[kXFg * C + c];
      bg += A_t * ch[kXBg * C + c];
      mask += std::fabs(c_f * y_s[c] - A_t);
      rela += ch[kM2D * C + c] + hw * (u[c] * u[c]);
    }
    const double row[4] = {fg, bg, mask, rela};
    std::copy(row, row + 4, part + 4 * n);
  }
}

// Image n of a level over pixels: its y_S rows and the pixel half of mask.
FGDKERN_INLINE double pixel_terms(const TermsLevel& lv, int64_t n, float* y_S) {
  const int64_t HW = lv.HW;
  const float hw = static_cast<float>(HW);
  const float* px = lv.pix.const_data_ptr<float>() + n * kPixRows * HW;
  float *ys = y_S + n * 2 * HW, *yt = ys + HW;
  softmax(px + kGsS * HW, HW, 1.0f / lv.temp, ys);
  softmax(px + kGsT * HW, HW, 1.0f / lv.temp, yt);
  return row_sum(ys, yt, HW, [hw](const Vec& a, const Vec& b) { return vabs(hw * a - hw * b); });
}

std::vector<at::Tensor> fgd_terms_cpu(at::TensorList pix, at::TensorList chan,
                                      at::TensorList mlp_s, at::TensorList mlp_t,
                                      at::ArrayRef<double> eps_s, at::ArrayRef<double> eps_t,
                                      at::ArrayRef<double> temp) {
  const std::vector<TermsLevel> levels =
      make_levels("fgd_terms_cpp", pix, chan, mlp_s, mlp_t, eps_s, eps_t, temp);
  const int64_t L = static_cast<int64_t>(levels.size());
  std::vector<at::Tensor> out{at::empty({L, 4}, at::dtype(at::kFloat))};
  std::vector<std::vector<double>> part(L), pix_mask(L);
  for (int64_t l = 0; l < L; ++l) {
    const TermsLevel& lv = levels[l];
    out.push_back(at::empty({lv.N, 2, lv.HW}, out[0].options()));
    part[l].resize(4 * lv.N);
    pix_mask[l].resize(lv.N);
  }
  each_level(L, [&](int64_t l) {
    on_active_isa([&](auto) FGDKERN_INLINE_LAMBDA { channel_terms(levels[l], part[l].data()); });
  });
  each_image(levels, [&](int64_t l, int64_t n) {
    pix_mask[l][n] = on_active_isa([&](auto) FGDKERN_INLINE_LAMBDA {
      return pixel_terms(levels[l], n, out[1 + l].data_ptr<float>());
    });
  });
  for (int64_t l = 0; l < L; ++l) {  // the images' sums in order, / N
    double row[4] = {};
    for (int64_t n = 0; n < levels[l].N; ++n) {
      for (int k = 0; k < 4; ++k) row[k] += part[l][4 * n + k];
      row[2] += pix_mask[l][n];
    }
    for (int k = 0; k < 4; ++k) {
      out[0].data_ptr<float>()[4 * l + k] = static_cast<float>(row[k] / levels[l].N);
    }
  }
  return out;
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("fgd_terms_cpp", &fgdkern::cpu::fgd_terms_cpu);
}
