// Math on short float rows for the CPU ops that run FGD's small math
// (csrc/cpu/fgd_terms.cpp, csrc/cpu/gc_mlp.h): a 16-lane exp, softmax, dot
// products in a fixed order, and y += a x. Sums that feed a result are kept
// in double or in several float lanes added in a fixed tree, so every result
// is the same bits whatever the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vec.h"

namespace fgdkern::cpu {

// exp(x) in every lane (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in r,
// 2^n from the exponent bits); within 2 ulp of std::exp, 0 below -87.3, NaN
// stays NaN, clamped at exp(88). The softmaxes here only see x <= 0.
template <class V>
FGDKERN_INLINE V vexp(const V& x) {
  using M = MaskOf<V>;
  const V lo = splat<V>(-87.33654f), hi = splat<V>(88.0f);
  const V xc = x < lo ? lo : (x > hi ? hi : x);  // NaN fails both tests and stays
  V n = xc * 1.44269504088896341f + 0.5f;
  const M ni = __builtin_convertvector(n, M);
  n = __builtin_convertvector(ni, V);
  n = n > xc * 1.44269504088896341f + 0.5f ? n - 1.0f : n;  // floor
  const V r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const M bits = (__builtin_convertvector(n, M) + 127) << 23;
  const V out = p * reinterpret_cast<const V&>(bits);
  return x < lo ? V{} : out;
}

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
