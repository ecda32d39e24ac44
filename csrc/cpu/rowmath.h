// Math on short float rows for the CPU ops that run FGD's small math
// (csrc/cpu/fgd_terms.cpp, csrc/cpu/gc_mlp.h), 16 lanes at a time: softmax, dot
// products in a fixed order, and y += a x. Sums that feed a result are kept
// in double or in several float lanes added in a fixed tree, so every result
// is the same bits whatever the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vec.h"

namespace fgdkern::cpu {

// Lanes of x[i .. i + n) * scale; the lanes past n are `fill`.
template <bool kFull>
FGDKERN_INLINE Vec lanes_of(const float* x, int64_t n, float scale, float fill = 0.0f) {
  const Vec v = load<true, kFull>(x, 1, n) * scale;
  if constexpr (kFull) return v;
  const Mask live = first_lanes(n);
  return reinterpret_cast<Vec>((reinterpret_cast<Mask>(v) & live) |
                               (reinterpret_cast<Mask>(splat(fill)) & ~live));
}

// max_i x[i] * scale (NaN ignored, as std::max does).
FGDKERN_INLINE float row_max(const float* x, int64_t n, float scale) {
  Vec m = splat(-INFINITY);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = lanes_of<true>(x + i, kLanes, scale);
    m = v > m ? v : m;
  }
  if (i < n) {
    const Vec v = lanes_of<false>(x + i, n - i, scale, -INFINITY);
    m = v > m ? v : m;
  }
  float out = m[0];
  for (int l = 1; l < kLanes; ++l) out = std::max(out, m[l]);
  return out;
}

// sum_i f(a[i], b[i]) for a lane function f, float lanes added per 16 elements, in double.
template <class F>
FGDKERN_INLINE double row_sum(const float* a, const float* b, int64_t n, const F& f) {
  double sum = 0.0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) sum += lane_sum(f(lanes_of<true>(a + i, kLanes, 1.0f),
                                                        lanes_of<true>(b + i, kLanes, 1.0f)));
  if (i < n) {
    sum += lane_sum(keep(first_lanes(n - i), f(lanes_of<false>(a + i, n - i, 1.0f),
                                               lanes_of<false>(b + i, n - i, 1.0f))));
  }
  return sum;
}

// y = softmax(x * scale) over n values (y may be x).
FGDKERN_INLINE void softmax(const float* x, int64_t n, float scale, float* y) {
  const float m = row_max(x, n, scale);
  if (!std::isfinite(m)) {  // +inf, or every value -inf: NaN, like exp(inf - inf)
    std::fill_n(y, n, NAN);
    return;
  }
  double sum = 0.0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec e = vexp(lanes_of<true>(x + i, kLanes, scale) - m);
    store<true, true>(y + i, 1, kLanes, e);
    sum += lane_sum(e);
  }
  if (i < n) {
    const Vec e = vexp(lanes_of<false>(x + i, n - i, scale) - m);
    store<true, false>(y + i, 1, n - i, e);
    sum += lane_sum(keep(first_lanes(n - i), e));
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t k = 0; k < n; ++k) y[k] *= inv;
}

// sum_i a[i] b[i]: two 16-lane sums (even and odd runs of 16), then a fixed tree.
FGDKERN_INLINE float dot(const float* a, const float* b, int64_t n) {
  Vec acc[2] = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc[0] += load<true, true>(a + i, 1, kLanes) * load<true, true>(b + i, 1, kLanes);
    acc[1] += load<true, true>(a + i + kLanes, 1, kLanes) * load<true, true>(b + i + kLanes, 1,
                                                                            kLanes);
  }
  for (; i < n; i += kLanes) {
    const int64_t m = std::min(kLanes, n - i);
    acc[0] += load<true, false>(a + i, 1, m) * load<true, false>(b + i, 1, m);
  }
  return lane_sum(acc[0] + acc[1]);
}

// y += a x over n values.
FGDKERN_INLINE void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Gradient w.r.t. the logits a of sum(g * y), y = softmax(a * scale):
// out = scale * y * (g - sum(g y)) (out may be g).
FGDKERN_INLINE void softmax_grad(const float* y, const float* g, int64_t n, float scale,
                                 float* out) {
  const float mean = static_cast<float>(
      row_sum(g, y, n, [](const Vec& a, const Vec& b) { return a * b; }));
  for (int64_t i = 0; i < n; ++i) out[i] = scale * y[i] * (g[i] - mean);
}

// sign(x): -1, 0 or 1 (0 for NaN).
FGDKERN_INLINE float sign(float x) { return static_cast<float>((x > 0.0f) - (x < 0.0f)); }

}  // namespace fgdkern::cpu
