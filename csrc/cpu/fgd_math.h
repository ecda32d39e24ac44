// Inline helpers of the fused FGD CPU passes (csrc/cpu/fgd.cpp): a 16-lane
// float vector, loads and stores that convert any element type to and from
// float, fixed-order lane sums, the merges of per-block partials (online
// softmax, Chan's second moment), and the per-element math of the four sweeps
// (StatsRows, StatsCols, GradRows, GradCols). Every order of summation here is
// fixed, so results never depend on how work is split across threads.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#if defined(__GNUC__)
#define FGD_INLINE inline __attribute__((always_inline))
#else
#define FGD_INLINE inline
#endif

// The block kernels are compiled for AVX-512, AVX2 and the baseline ISA; the
// loader picks the best one the CPU has (GCC on x86-64 Linux). Everything they
// call is FGD_INLINE, so it is compiled into each variant.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FGD_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define FGD_CPU_CLONES
#endif

namespace fgdkern::cpu {

constexpr int64_t kLanes = 16;
using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));
using Mask = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));
template <int K>
using Vecs = std::array<Vec, K>;

FGD_INLINE Vec splat(float x) { return Vec{} + x; }

FGD_INLINE Vec vabs(Vec x) { return reinterpret_cast<Vec>(reinterpret_cast<Mask>(x) & 0x7fffffff); }

// sign(0) = 0
FGD_INLINE Vec vsign(Vec x) {
  return (x > 0.0f ? splat(1.0f) : Vec{}) - (x < 0.0f ? splat(1.0f) : Vec{});
}

// Lanes 0 .. n-1 set.
FGD_INLINE Mask first_lanes(int64_t n) {
  Mask lane;
  for (int32_t l = 0; l < kLanes; ++l) lane[l] = l;
  return (lane - static_cast<int32_t>(n)) >> 31;  // all ones where lane < n
}

// x where the mask is set, else 0 (also when x is not finite).
FGD_INLINE Vec keep(Mask m, Vec x) { return reinterpret_cast<Vec>(reinterpret_cast<Mask>(x) & m); }

// ------------------------------------------------- element types <-> float
// Exact conversions of 16 lanes, written on the bits so that they vectorise:
// bfloat16 is the top half of a float; float16 goes through Giesen's
// renormalisation, whose float operations never see a denormal (so they stay
// exact under FlushDenormals below). Both round to nearest even, like c10.
using Bits = uint32_t __attribute__((vector_size(kLanes * sizeof(uint32_t))));
using Bits16 = uint16_t __attribute__((vector_size(kLanes * sizeof(uint16_t))));

template <typename scalar_t>
using Storage = std::conditional_t<std::is_same_v<scalar_t, float>, Vec, Bits16>;

FGD_INLINE Vec as_vec(Bits b) { return reinterpret_cast<Vec>(b); }
FGD_INLINE Bits as_bits(Vec v) { return reinterpret_cast<Bits>(v); }
FGD_INLINE Bits splat_bits(uint32_t x) { return Bits{} + x; }

FGD_INLINE Vec widen(Vec v, float) { return v; }

FGD_INLINE Vec widen(Bits16 h, c10::BFloat16) {
  return as_vec(__builtin_convertvector(h, Bits) << 16);
}

FGD_INLINE Vec widen(Bits16 h16, c10::Half) {
  const Bits h = __builtin_convertvector(h16, Bits);
  const Bits exponent = h & 0x7c00u, magnitude = ((h & 0x7fffu) << 13) + ((127u - 15u) << 23);
  const Bits inf_nan = magnitude + ((128u - 16u) << 23);
  const Vec subnormal = as_vec(magnitude + (1u << 23)) - as_vec(splat_bits(113u << 23));
  const Bits f = exponent == 0x7c00u ? inf_nan : exponent == 0u ? as_bits(subnormal) : magnitude;
  return as_vec(f | ((h & 0x8000u) << 16));
}

FGD_INLINE Vec narrow(Vec v, float) { return v; }

FGD_INLINE Bits16 narrow(Vec v, c10::BFloat16) {
  const Bits u = as_bits(v), rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return __builtin_convertvector(v != v ? splat_bits(0x7fc0u) : rounded, Bits16);
}

FGD_INLINE Bits16 narrow(Vec v, c10::Half) {
  const Bits sign = as_bits(v) & 0x80000000u, f = as_bits(v) ^ sign;
  const Bits inf_nan = f > (255u << 23) ? splat_bits(0x7e00u) : splat_bits(0x7c00u);
  const Bits subnormal = as_bits(as_vec(f) + as_vec(splat_bits(126u << 23))) - (126u << 23);
  const Bits normal = (f + ((15u - 127u) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
  const Bits h = f >= (143u << 23) ? inf_nan : f < (113u << 23) ? subnormal : normal;
  return __builtin_convertvector(h | (sign >> 16), Bits16);
}

// x[i * step] for i < n as floats; the other lanes are 0. kFull: n == kLanes.
template <bool kUnit, bool kFull, typename scalar_t>
FGD_INLINE Vec load(const scalar_t* x, int64_t step, int64_t n) {
  static_assert(sizeof(Storage<scalar_t>) == kLanes * sizeof(scalar_t));
  Storage<scalar_t> v{};
  if constexpr (kUnit && kFull) {
    std::memcpy(&v, x, sizeof v);
  } else {
    for (int64_t i = 0; i < (kFull ? kLanes : n); ++i) {
      std::memcpy(reinterpret_cast<char*>(&v) + i * sizeof(scalar_t), x + (kUnit ? i : i * step),
                  sizeof(scalar_t));
    }
  }
  return widen(v, scalar_t{});
}

// x[i * step] = v[i] for i < n, converted to scalar_t.
template <bool kUnit, bool kFull, typename scalar_t>
FGD_INLINE void store(scalar_t* x, int64_t step, int64_t n, Vec v) {
  const Storage<scalar_t> w = narrow(v, scalar_t{});
  if constexpr (kUnit && kFull) {
    std::memcpy(x, &w, sizeof w);
  } else {
    for (int64_t i = 0; i < (kFull ? kLanes : n); ++i) {
      std::memcpy(x + (kUnit ? i : i * step), reinterpret_cast<const char*>(&w) + i * sizeof(scalar_t),
                  sizeof(scalar_t));
    }
  }
}

// Halves of a vector: lanes 0 .. W/2-1 and W/2 .. W-1.
template <typename Half, typename V>
FGD_INLINE void split(V v, Half& lo, Half& hi) {
  static_assert(2 * sizeof(Half) == sizeof(V));
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
}

// Sum of the lanes as a fixed tree: lanes i and i + 8 first, then halves again.
FGD_INLINE float lane_sum(Vec v) {
  using Vec8 = float __attribute__((vector_size(8 * sizeof(float))));
  using Vec4 = float __attribute__((vector_size(4 * sizeof(float))));
  static_assert(kLanes == 16);
  Vec8 a, b;
  split(v, a, b);
  Vec4 c, d;
  split(a + b, c, d);
  const Vec4 s = c + d;
  return (s[0] + s[2]) + (s[1] + s[3]);
}

// While alive, the calling thread flushes denormal floats (below 1.2e-38) to
// zero, as results and as operands. Softmax weights of far-away pixels are
// often denormal, and x86 CPUs take ~100 cycles for each operation on one; the
// change to any result is below 1e-37 in absolute terms.
class FlushDenormals {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned saved_;
#endif
};

// A block's softmax sums were weighted by exp(z - max_b) with its own max;
// sum = sum_ij exp(z - max_b) over the block.
struct SoftmaxPart {
  float max, sum;
};

// factor[b] = exp(max_b - M) / sum_b' sum_b' exp(max_b' - M), M the largest
// max_b: turns block sums weighted by exp(z - max_b) into sums weighted by
// softmax(z) over all blocks. Blocks are read in order, parts[b * stride].
inline void softmax_factors(const SoftmaxPart* parts, int64_t stride, int64_t nb,
                            double* factor) {
  double M = -INFINITY;
  for (int64_t b = 0; b < nb; ++b) M = std::fmax(M, parts[b * stride].max);
  double Z = 0.0;
  for (int64_t b = 0; b < nb; ++b) {
    factor[b] = std::exp(static_cast<double>(parts[b * stride].max) - M);
    Z += factor[b] * parts[b * stride].sum;
  }
  for (int64_t b = 0; b < nb; ++b) factor[b] /= Z;
}

// Count, mean and centred second moment of D in one channel, merged block by
// block with Chan's formula (no cancellation when the mean is large).
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;

  FGD_INLINE void merge(double n, double sum, double m2_block) {
    const double mean_block = sum / n, delta = mean_block - mean, total = count + n;
    mean += delta * (n / total);
    m2 += m2_block + delta * delta * (count * n / total);
    count = total;
  }
};

// -------------------------------------------- the math of the four sweeps
// What one sweep over a tile reads and adds up. Per element (c, p) a loop
// gets s = S[c, p], t = T[c, p], its per-pixel inputs at p and per-channel
// inputs at c; it returns dS[c, p] (when kWrites) and contributions to sums
// over channels per pixel (pix_out[k][p] +=) and over pixels per channel
// (chan_out[k][c] +=).
template <int kPixIn_, int kChanIn_, int kPixOut_, int kChanOut_, bool kWrites_ = false>
struct Loop {
  static constexpr int kPixIn = kPixIn_, kChanIn = kChanIn_;
  static constexpr int kPixOut = kPixOut_, kChanOut = kChanOut_;
  static constexpr bool kWrites = kWrites_;
  std::array<const float*, kPixIn> pix_in{};
  std::array<const float*, kChanIn> chan_in{};
  std::array<float*, kPixOut> pix_out{};
  std::array<float*, kChanOut> chan_out{};
};

// fgd_stats, first sweep: per pixel |S|, |T|, w_s S, w_t T (-> gs, z);
// per channel |S|, |T|, D (-> gc, sum_d).
struct StatsRows : Loop<0, 2, 4, 3> {
  FGD_INLINE Vec operator()(Vec s, Vec t, const Vecs<0>&, const Vecs<2>& w, Vecs<4>& pix,
                            Vecs<3>& chan) const {
    const Vec abs_s = vabs(s), abs_t = vabs(t);
    pix = {abs_s, abs_t, w[0] * s, w[1] * t};
    chan = {abs_s, abs_t, s - t};
    return Vec{};
  }
};

// fgd_stats, second sweep, with per-pixel weights e_s = exp(z_s - m),
// e_t = exp(z_t - m), a_fg = fg exp(gs_t / temp - m), a_bg likewise, and the
// block mean of D per channel: per channel ctx_s, ctx_t, m2_d, x_fg, x_bg.
struct StatsCols : Loop<4, 1, 0, 5> {
  FGD_INLINE Vec operator()(Vec s, Vec t, const Vecs<4>& e, const Vecs<1>& mean_d, Vecs<0>&,
                            Vecs<5>& chan) const {
    const Vec D = s - t, centred = D - mean_d[0], D2 = D * D;
    chan = {e[0] * s, e[1] * t, centred * centred, e[2] * D2, e[3] * D2};
    return Vec{};
  }
};

// fgd_grad, first sweep: per pixel gp_s = g_ctx_s . S, gp_t = g_ctx_t . T.
struct GradRows : Loop<0, 2, 2, 0> {
  FGD_INLINE Vec operator()(Vec s, Vec t, const Vecs<0>&, const Vecs<2>& g_ctx, Vecs<2>& gp,
                            Vecs<0>&) const {
    gp = {g_ctx[0] * s, g_ctx[1] * t};
    return Vec{};
  }
};

// fgd_grad, second sweep: dS, and per channel dz_s S, dz_t T (-> dw_s, dw_t).
// Pixel inputs: a_sign, fgA, bgA, p_s, dz_s, dz_t; channel inputs: b_sign,
// k_d, k_const, k_fg, k_bg, g_ctx_s, w_s.
struct GradCols : Loop<6, 7, 0, 2, true> {
  FGD_INLINE Vec operator()(Vec s, Vec t, const Vecs<6>& px, const Vecs<7>& ch, Vecs<0>&,
                            Vecs<2>& dw) const {
    const auto& [a_sign, fgA, bgA, p_s, dz_s, dz_t] = px;
    const auto& [b_sign, k_d, k_const, k_fg, k_bg, g_ctx_s, w_s] = ch;
    dw = {dz_s * s, dz_t * t};
    return vsign(s) * (a_sign + b_sign) + (s - t) * (k_d + k_fg * fgA + k_bg * bgA) + k_const +
           p_s * g_ctx_s + w_s * dz_s;
  }
};

}  // namespace fgdkern::cpu
