// One level's GcBlock channel_add MLP on the (C,) contexts of N images, forward
// and its backward written out (docs/kernels.md, "The terms' backward"):
//   h = W1 x + b1 (H = C/2),  hn = (h - mean h) / sqrt(var h + eps),
//   r = relu(gamma hn + beta),  out = W2 r + b2.
// Every matrix row is read once per direction for all images, and every
// weight-gradient row written once, the images' terms added in order.
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

// Their gradients, written (in the same layouts).
struct GcMLPGrads {
  float *W1, *b1, *gamma, *beta, *W2, *b2;
};

// What the backward needs of the forward of N images: hn, r (N, H), rstd (N).
struct GcMLPActs {
  float *hn, *r, *rstd;
};

// Image n's row of a per-image quantity: x + n * step.
template <typename T>
struct RowsOf {
  T* x;
  int64_t step;
  FGDKERN_INLINE T* operator[](int64_t n) const { return x + n * step; }
};
using Rows = RowsOf<const float>;
using OutRows = RowsOf<float>;

// The backward of out = W in + b (W: rows x cols) for N images: writes gW and gb,
// each row once, and adds W^T g_out[n] to g_in[n]. g_out: (N, rows).
FGDKERN_INLINE void linear_backward(const float* W, int64_t rows, int64_t cols, int64_t N,
                                    const float* g_out, Rows in, float* gW, float* gb,
                                    OutRows g_in) {
  for (int64_t i = 0; i < rows; ++i) {
    std::fill_n(gW + i * cols, cols, 0.0f);
    gb[i] = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      const float g = g_out[n * rows + i];
      gb[i] += g;
      axpy(g, in[n], gW + i * cols, cols);
      axpy(g, W + i * cols, g_in[n], cols);
    }
  }
}

// out (N, C) of the MLP on the N contexts x; fills a.
FGDKERN_INLINE void gc_mlp_forward(const GcMLP& m, Rows x, int64_t N, const GcMLPActs& a,
                                   float* out) {
  const int64_t C = m.C, H = m.H;
  for (int64_t j = 0; j < H; ++j) {  // h, row j of W1 for every image
    for (int64_t n = 0; n < N; ++n) a.hn[n * H + j] = m.b1[j] + dot(m.W1 + j * C, x[n], C);
  }
  for (int64_t n = 0; n < N; ++n) {  // LayerNorm, relu
    float* hn = a.hn + n * H;
    double mean = 0.0, var = 0.0;
    for (int64_t j = 0; j < H; ++j) mean += hn[j];
    mean /= static_cast<double>(H);
    for (int64_t j = 0; j < H; ++j) var += (hn[j] - mean) * (hn[j] - mean);
    a.rstd[n] = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(H) + m.eps));
    const float mean_f = static_cast<float>(mean);
    for (int64_t j = 0; j < H; ++j) {
      hn[j] = (hn[j] - mean_f) * a.rstd[n];
      const float y = m.gamma[j] * hn[j] + m.beta[j];
      a.r[n * H + j] = y > 0.0f || y != y ? y : 0.0f;  // NaN stays
    }
  }
  for (int64_t c = 0; c < C; ++c) {  // out, row c of W2 for every image
    for (int64_t n = 0; n < N; ++n) out[n * C + c] = m.b2[c] + dot(m.W2 + c * H, a.r + n * H, H);
  }
}

// Given g_out (N, C), the gradient of the MLP's output: writes the parameters'
// gradients to g and g_x[n] (C each). scratch: 2 N H floats.
FGDKERN_INLINE void gc_mlp_backward(const GcMLP& m, Rows x, int64_t N, const GcMLPActs& a,
                                    const float* g_out, GcMLPGrads& g, OutRows g_x,
                                    float* scratch) {
  const int64_t C = m.C, H = m.H;
  float *g_y = scratch, *g_h = scratch + N * H;
  std::fill_n(g_y, N * H, 0.0f);
  linear_backward(m.W2, C, H, N, g_out, {a.r, H}, g.W2, g.b2, {g_y, H});  // out = W2 r + b2
  std::fill_n(g.gamma, H, 0.0f);
  std::fill_n(g.beta, H, 0.0f);
  for (int64_t n = 0; n < N; ++n) {  // relu, then the LayerNorm's affine and normalisation
    const float *hn = a.hn + n * H, *r = a.r + n * H;
    float *gy = g_y + n * H, *gh = g_h + n * H;
    double mean_g = 0.0, mean_ghn = 0.0;
    for (int64_t j = 0; j < H; ++j) {
      if (!(r[j] > 0.0f)) gy[j] = 0.0f;
      g.gamma[j] += gy[j] * hn[j];
      g.beta[j] += gy[j];
      gh[j] = gy[j] * m.gamma[j];  // the gradient of hn, for now
      mean_g += gh[j];
      mean_ghn += static_cast<double>(gh[j]) * hn[j];
    }
    const float mg = static_cast<float>(mean_g / H), mgh = static_cast<float>(mean_ghn / H);
    for (int64_t j = 0; j < H; ++j) gh[j] = a.rstd[n] * (gh[j] - mg - hn[j] * mgh);
  }
  for (int64_t n = 0; n < N; ++n) std::fill_n(g_x[n], C, 0.0f);
  linear_backward(m.W1, H, C, N, g_h, x, g.W1, g.b1, g_x);  // h = W1 x + b1
}

}  // namespace fgdkern::cpu
