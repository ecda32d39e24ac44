// What the two CPU ops of FGD's small math share (csrc/cpu/fgd_terms.cpp,
// csrc/cpu/fgd_terms_grad.cpp): their levels, checked, and the per-image
// channel state both compute.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "fgd_rows.h"
#include "gc_mlp.h"
#include "rowmath.h"

namespace fgdkern::cpu {

constexpr int kSides = 2;  // student, teacher
constexpr int kMLPParams = 6;

struct TermsLevel {
  at::Tensor pix, chan;  // float32, contiguous
  int64_t N, C, HW;
  float temp;
  GcMLP mlp[kSides];
  std::vector<at::Tensor> params[kSides];  // contiguous, kept alive for mlp's pointers
};

inline GcMLP make_mlp(const char* op, const char* name, size_t l, at::TensorList p, int64_t C,
                      double eps, std::vector<at::Tensor>& keep) {
  const int64_t H = C / 2;
  const int64_t numel[kMLPParams] = {H * C, H, H, H, C * H, C};
  for (int k = 0; k < kMLPParams; ++k) {
    TORCH_CHECK(p[k].device().is_cpu() && p[k].scalar_type() == at::kFloat &&
                    p[k].numel() == numel[k],
                op, ": ", name, "[", 6 * l + k, "] must be a float32 CPU tensor of ", numel[k],
                " elements (C = ", C, "), got ", p[k].scalar_type(), " ", p[k].sizes());
    keep.push_back(p[k].contiguous());
  }
  const auto ptr = [&](int k) { return keep[k].const_data_ptr<float>(); };
  return {ptr(0), ptr(1), ptr(2), ptr(3), ptr(4), ptr(5), C, H, static_cast<float>(eps)};
}

inline std::vector<TermsLevel> make_levels(const char* op, at::TensorList pix,
                                           at::TensorList chan, at::TensorList mlp_s,
                                           at::TensorList mlp_t, at::ArrayRef<double> eps_s,
                                           at::ArrayRef<double> eps_t,
                                           at::ArrayRef<double> temp) {
  const size_t L = pix.size();
  check_levels(op, L, {chan});
  check_positive_per_level(op, "temp", L, temp);
  check_positive_per_level(op, "eps_s", L, eps_s);
  check_positive_per_level(op, "eps_t", L, eps_t);
  TORCH_CHECK(mlp_s.size() == kMLPParams * L && mlp_t.size() == kMLPParams * L, op,
              ": mlp_s and mlp_t must hold 6 tensors per level");
  std::vector<TermsLevel> levels(L);
  for (size_t l = 0; l < L; ++l) {
    TermsLevel& lv = levels[l];
    TORCH_CHECK(pix[l].dim() == 3 && pix[l].size(1) == kPixRows && chan[l].dim() == 3 &&
                    chan[l].size(1) == kChanRows && chan[l].size(0) == pix[l].size(0),
                op, ": pix[", l, "] must be (N, 4, HW) and chan[", l, "] (N, 8, C), got ",
                pix[l].sizes(), " and ", chan[l].sizes());
    check_float(op, "pix", l, pix[l], pix[l].sizes());
    check_float(op, "chan", l, chan[l], chan[l].sizes());
    lv.pix = pix[l].contiguous();
    lv.chan = chan[l].contiguous();
    lv.N = pix[l].size(0), lv.C = chan[l].size(2), lv.HW = pix[l].size(2);
    TORCH_CHECK(lv.C >= 2, op, ": chan[", l, "] needs C >= 2, got ", lv.C);
    lv.temp = static_cast<float>(temp[l]);
    lv.mlp[0] = make_mlp(op, "mlp_s", l, mlp_s.slice(kMLPParams * l, kMLPParams), lv.C,
                         eps_s[l], lv.params[0]);
    lv.mlp[1] = make_mlp(op, "mlp_t", l, mlp_t.slice(kMLPParams * l, kMLPParams), lv.C,
                         eps_t[l], lv.params[1]);
  }
  return levels;
}

// fn(level index) for every level, in parallel, with denormals flushed.
template <class Fn>
void each_level(size_t L, const Fn& fn) {
  at::parallel_for(0, static_cast<int64_t>(L), 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    for (int64_t l = begin; l < end; ++l) fn(l);
  });
}

// fn(level index, n) for every image of every level, in parallel, with denormals
// flushed. Image-major, so that the threads' static shares each get whole images of
// the largest level rather than one thread all of it.
template <class Fn>
void each_image(const std::vector<TermsLevel>& levels, const Fn& fn) {
  const int64_t L = static_cast<int64_t>(levels.size());
  int64_t N = 0;
  for (const TermsLevel& lv : levels) N = std::max(N, lv.N);
  at::parallel_for(0, L * N, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    for (int64_t i = begin; i < end; ++i) {
      if (i / L < levels[i % L].N) fn(i % L, i / L);
    }
  });
}

// All images of a level: the channel softmaxes y_s, y_t of gc / temp (N, C),
// the MLP activations and outputs of both sides, and u = mean_d + shift
// (N, C), shift = out_s - out_t.
struct LevelChannels {
  int64_t N, C, H;
  std::vector<float> y_s, y_t, u, out[kSides], hn[kSides], r[kSides], rstd[kSides];

  explicit LevelChannels(const TermsLevel& lv)
      : N(lv.N), C(lv.C), H(lv.mlp[0].H), y_s(N * C), y_t(N * C), u(N * C) {
    for (int s = 0; s < kSides; ++s) {
      out[s].resize(N * C);
      hn[s].resize(N * H);
      r[s].resize(N * H);
      rstd[s].resize(N);
    }
  }

  GcMLPActs acts(int side) { return {hn[side].data(), r[side].data(), rstd[side].data()}; }

  FGDKERN_INLINE void compute(const TermsLevel& lv) {
    const float* chan = lv.chan.const_data_ptr<float>();
    for (int64_t n = 0; n < N; ++n) {
      const float* ch = chan + n * kChanRows * C;
      softmax(ch + kGcS * C, C, 1.0f / lv.temp, y_s.data() + n * C);
      softmax(ch + kGcT * C, C, 1.0f / lv.temp, y_t.data() + n * C);
    }
    gc_mlp_forward(lv.mlp[0], {chan + kCtxS * C, kChanRows * C}, N, acts(0), out[0].data());
    gc_mlp_forward(lv.mlp[1], {chan + kCtxT * C, kChanRows * C}, N, acts(1), out[1].data());
    const float hw = static_cast<float>(lv.HW);
    for (int64_t n = 0; n < N; ++n) {
      const float* sum_d = chan + n * kChanRows * C + kSumD * C;
      for (int64_t c = 0; c < C; ++c) {
        u[n * C + c] = sum_d[c] / hw + (out[0][n * C + c] - out[1][n * C + c]);
      }
    }
  }
};

}  // namespace fgdkern::cpu
