// One GcBlock channel_add MLP on one image's (C,) context, forward and its
// backward written out (docs/kernels.md, "The terms' backward"):
//   h = W1 x + b1 (H = C/2),  hn = (h - mean h) / sqrt(var h + eps),
//   r = relu(gamma hn + beta),  out = W2 r + b2.
// Each matrix is read once per direction, row by row; the backward writes
// each weight gradient row as it reads the matrix row.
#pragma once

#include <cmath>
#include <cstdint>

#include "rowmath.h"

namespace fgdkern::cpu {

// The parameters of one level's MLP, float32, contiguous.
struct GcMLP {
  const float *W1, *b1, *gamma, *beta, *W2, *b2;  // (H, C), (H), (H), (H), (C, H), (C)
  int64_t C, H;
  float eps;
};

// Their gradients, added to (in the same layouts).
struct GcMLPGrads {
  float *W1, *b1, *gamma, *beta, *W2, *b2;
};

// What the backward needs of one image's forward: hn (H), r (H), rstd.
struct GcMLPActs {
  float* hn;
  float* r;
  float rstd;
};

// out (C) of the MLP on x (C); fills a.
FGDKERN_INLINE void gc_mlp_forward(const GcMLP& m, const float* x, GcMLPActs& a, float* out) {
  const int64_t C = m.C, H = m.H;
  double mean = 0.0;
  for (int64_t j = 0; j < H; ++j) {
    a.hn[j] = m.b1[j] + dot(m.W1 + j * C, x, C);
    mean += a.hn[j];
  }
  mean /= static_cast<double>(H);
  double var = 0.0;
  for (int64_t j = 0; j < H; ++j) var += (a.hn[j] - mean) * (a.hn[j] - mean);
  a.rstd = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(H) + m.eps));
  const float mean_f = static_cast<float>(mean);
  for (int64_t j = 0; j < H; ++j) {
    a.hn[j] = (a.hn[j] - mean_f) * a.rstd;
    const float y = m.gamma[j] * a.hn[j] + m.beta[j];
    a.r[j] = y > 0.0f || y != y ? y : 0.0f;  // relu; NaN stays
  }
  for (int64_t c = 0; c < C; ++c) out[c] = m.b2[c] + dot(m.W2 + c * H, a.r, H);
}

// Given g_out (C) = the gradient of the MLP's output: adds the parameters'
// gradients to g and writes g_x (C). scratch: 2 H floats.
FGDKERN_INLINE void gc_mlp_backward(const GcMLP& m, const float* x, const GcMLPActs& a,
                                    const float* g_out, GcMLPGrads& g, float* g_x,
                                    float* scratch) {
  const int64_t C = m.C, H = m.H;
  float *g_y = scratch, *g_hn = scratch + H;
  std::fill_n(g_y, H, 0.0f);
  for (int64_t c = 0; c < C; ++c) {  // out = W2 r + b2
    g.b2[c] += g_out[c];
    axpy(g_out[c], a.r, g.W2 + c * H, H);
    axpy(g_out[c], m.W2 + c * H, g_y, H);
  }
  double mean_g = 0.0, mean_ghn = 0.0;
  for (int64_t j = 0; j < H; ++j) {  // relu, then the LayerNorm's affine
    if (!(a.r[j] > 0.0f)) g_y[j] = 0.0f;
    g.gamma[j] += g_y[j] * a.hn[j];
    g.beta[j] += g_y[j];
    g_hn[j] = g_y[j] * m.gamma[j];
    mean_g += g_hn[j];
    mean_ghn += static_cast<double>(g_hn[j]) * a.hn[j];
  }
  const float mg = static_cast<float>(mean_g / H), mgh = static_cast<float>(mean_ghn / H);
  std::fill_n(g_x, C, 0.0f);
  for (int64_t j = 0; j < H; ++j) {  // the normalisation, then h = W1 x + b1
    const float g_h = a.rstd * (g_hn[j] - mg - a.hn[j] * mgh);
    g.b1[j] += g_h;
    axpy(g_h, x, g.W1 + j * C, C);
    axpy(g_h, m.W1 + j * C, g_x, C);
  }
}

}  // namespace fgdkern::cpu
