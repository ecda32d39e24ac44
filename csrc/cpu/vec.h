// Float vectors of 4, 8 or 16 lanes for the CPU kernels: lane masks, loads and stores
// that convert float32 / float16 / bfloat16 to and from float exactly, exp, a
// lane sum in a fixed order and denormal flushing. Nothing here knows what a
// loss computes.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "isa.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace fgdkern::cpu {

// The vector types of W lanes. Each ISA variant sweeps with its native width
// (kNativeLanes): vectors wider than the registers are kept in memory by GCC.
template <int W>
struct VecTypes {
  typedef float vec __attribute__((vector_size(W * sizeof(float))));
  typedef int32_t mask __attribute__((vector_size(W * sizeof(int32_t))));
  typedef uint32_t bits __attribute__((vector_size(W * sizeof(uint32_t))));
  typedef uint16_t bits16 __attribute__((vector_size(W * sizeof(uint16_t))));
};
template <class V>
constexpr int kLanesOf = sizeof(V) / sizeof(float);
template <int W>
using VecOf = typename VecTypes<W>::vec;
template <class V>
using MaskOf = typename VecTypes<kLanesOf<V>>::mask;

// The small math's width (csrc/cpu/rowmath.h); the sweeps take theirs from the variant.
constexpr int64_t kLanes = 16;
using Vec = VecOf<kLanes>;
using Mask = MaskOf<Vec>;
template <int K, class V = Vec>
using Vecs = std::array<V, K>;
// Functions take vectors by const reference: once inlined it is the same code,
// and GCC notes an ABI change for every 32- or 64-byte vector passed by value.

// Lanes of the sweeps in each variant: one register.
template <Isa kIsa>
constexpr int kNativeLanes = kIsa == Isa::kAvx512 ? 16 : kIsa == Isa::kAvx2 ? 8 : 4;

template <class V = Vec>
FGDKERN_INLINE V splat(float x) { return V{} + x; }

template <class V>
FGDKERN_INLINE V vabs(const V& x) {
  return reinterpret_cast<V>(reinterpret_cast<MaskOf<V>>(x) & 0x7fffffff);
}

// sign(0) = 0
template <class V>
FGDKERN_INLINE V vsign(const V& x) {
  return (x > 0.0f ? splat<V>(1.0f) : V{}) - (x < 0.0f ? splat<V>(1.0f) : V{});
}

// Lanes 0 .. n-1 set.
template <class V = Vec>
FGDKERN_INLINE MaskOf<V> first_lanes(int64_t n) {
  MaskOf<V> lane;
  for (int32_t l = 0; l < kLanesOf<V>; ++l) lane[l] = l;
  return (lane - static_cast<int32_t>(n)) >> 31;  // all ones where lane < n
}

// x where the mask is set, else 0 (also when x is not finite).
template <class V>
FGDKERN_INLINE V keep(const MaskOf<V>& m, const V& x) {
  return reinterpret_cast<V>(reinterpret_cast<MaskOf<V>>(x) & m);
}

// ------------------------------------------------- element types <-> float
// Exact conversions of 16 lanes, written on the bits so that they vectorise:
// bfloat16 is the top half of a float; float16 goes through Giesen's
// renormalisation, whose float operations never see a denormal (so they stay
// exact under FlushDenormals below). Both round to nearest even, like c10.
template <class H>  // the float vector of as many lanes as H
using WideOf = VecOf<sizeof(H) / sizeof(uint16_t)>;
template <class V>
using BitsOf = typename VecTypes<kLanesOf<V>>::bits;

template <typename scalar_t, class V>
using Storage = std::conditional_t<std::is_same_v<scalar_t, float>, V,
                                   typename VecTypes<kLanesOf<V>>::bits16>;

template <class B>
FGDKERN_INLINE VecOf<sizeof(B) / sizeof(uint32_t)> as_vec(const B& b) {
  return reinterpret_cast<VecOf<sizeof(B) / sizeof(uint32_t)>>(b);
}
template <class V>
FGDKERN_INLINE BitsOf<V> as_bits(const V& v) { return reinterpret_cast<BitsOf<V>>(v); }
template <class B>
FGDKERN_INLINE B splat_bits(uint32_t x) { return B{} + x; }

template <class V>
FGDKERN_INLINE V widen(const V& v, float) { return v; }

template <class H>
FGDKERN_INLINE WideOf<H> widen(const H& h, c10::BFloat16) {
  return as_vec(__builtin_convertvector(h, BitsOf<WideOf<H>>) << 16);
}

template <class H>
FGDKERN_INLINE WideOf<H> widen(const H& h16, c10::Half) {
  using Bits = BitsOf<WideOf<H>>;
  const Bits h = __builtin_convertvector(h16, Bits);
  const Bits exponent = h & 0x7c00u, magnitude = ((h & 0x7fffu) << 13) + ((127u - 15u) << 23);
  const Bits inf_nan = magnitude + ((128u - 16u) << 23);
  const auto subnormal = as_vec(magnitude + (1u << 23)) - as_vec(splat_bits<Bits>(113u << 23));
  const Bits f = exponent == 0x7c00u ? inf_nan : exponent == 0u ? as_bits(subnormal) : magnitude;
  return as_vec(f | ((h & 0x8000u) << 16));
}

template <class V>
FGDKERN_INLINE V narrow(const V& v, float) { return v; }

template <class V>
FGDKERN_INLINE Storage<c10::BFloat16, V> narrow(const V& v, c10::BFloat16) {
  using Bits = BitsOf<V>;
  const Bits u = as_bits(v), rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return __builtin_convertvector(v != v ? splat_bits<Bits>(0x7fc0u) : rounded,
                                 Storage<c10::BFloat16, V>);
}

template <class V>
FGDKERN_INLINE Storage<c10::Half, V> narrow(const V& v, c10::Half) {
  using Bits = BitsOf<V>;
  const Bits sign = as_bits(v) & 0x80000000u, f = as_bits(v) ^ sign;
  const Bits inf_nan = f > (255u << 23) ? splat_bits<Bits>(0x7e00u) : splat_bits<Bits>(0x7c00u);
  const Bits subnormal = as_bits(as_vec(f) + as_vec(splat_bits<Bits>(126u << 23))) - (126u << 23);
  const Bits normal = (f + ((15u - 127u) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
  const Bits h = f >= (143u << 23) ? inf_nan : f < (113u << 23) ? subnormal : normal;
  return __builtin_convertvector(h | (sign >> 16), Storage<c10::Half, V>);
}

// x[i * step] for i < n as floats; the other lanes are 0. kFull: n == the lane count.
template <bool kUnit, bool kFull, class V = Vec, typename scalar_t>
FGDKERN_INLINE V load(const scalar_t* x, int64_t step, int64_t n) {
  static_assert(sizeof(Storage<scalar_t, V>) == kLanesOf<V> * sizeof(scalar_t));
  Storage<scalar_t, V> v{};
  if constexpr (kUnit && kFull) {
    std::memcpy(&v, x, sizeof v);
  } else {
    for (int64_t i = 0; i < (kFull ? kLanesOf<V> : n); ++i) {
      std::memcpy(reinterpret_cast<char*>(&v) + i * sizeof(scalar_t), x + (kUnit ? i : i * step),
                  sizeof(scalar_t));
    }
  }
  return widen(v, scalar_t{});
}

// x[i * step] = v[i] for i < n, converted to scalar_t.
template <bool kUnit, bool kFull, typename scalar_t, class V>
FGDKERN_INLINE void store(scalar_t* x, int64_t step, int64_t n, const V& v) {
  const Storage<scalar_t, V> w = narrow(v, scalar_t{});
  if constexpr (kUnit && kFull) {
    std::memcpy(x, &w, sizeof w);
  } else {
    for (int64_t i = 0; i < (kFull ? kLanesOf<V> : n); ++i) {
      const char* lane = reinterpret_cast<const char*>(&w) + i * sizeof(scalar_t);
      std::memcpy(x + (kUnit ? i : i * step), lane, sizeof(scalar_t));
    }
  }
}

// s = a + b rounded, and e = (a + b) - s exactly (Knuth's TwoSum; any |a|, |b|).
template <class V>
FGDKERN_INLINE V two_sum(const V& a, const V& b, V& e) {
  const V s = a + b, b_part = s - a;
  e = (a - (s - b_part)) + (b - b_part);
  return s;
}

// Halves of a vector: lanes 0 .. W/2-1 and W/2 .. W-1.
template <typename Half, typename V>
FGDKERN_INLINE void split(const V& v, Half& lo, Half& hi) {
  static_assert(2 * sizeof(Half) == sizeof(V));
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
}

// Sum of the lanes as a fixed tree: lanes i and i + W/2 first, down to four lanes,
// then (0 + 2) + (1 + 3).
template <class V>
FGDKERN_INLINE float lane_sum(const V& v) {
  if constexpr (kLanesOf<V> == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {
    VecOf<kLanesOf<V> / 2> a, b;
    split(v, a, b);
    return lane_sum(a + b);
  }
}

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

// Largest lane (a NaN lane is dropped unless every lane is NaN).
template <class V>
FGDKERN_INLINE float lane_max(const V& v) {
  float m = v[0];
  for (int l = 1; l < kLanesOf<V>; ++l) m = v[l] > m ? v[l] : m;
  return m;
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

}  // namespace fgdkern::cpu
