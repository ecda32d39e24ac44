// 16-lane float vectors for the CPU kernels: lane masks, loads and stores
// that convert float32 / float16 / bfloat16 to and from float exactly, a
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

constexpr int64_t kLanes = 16;
using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));
using Mask = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));
template <int K>
using Vecs = std::array<Vec, K>;
// Functions take vectors by const reference: once inlined it is the same code,
// and GCC notes an ABI change for every 32- or 64-byte vector passed by value.

FGDKERN_INLINE Vec splat(float x) { return Vec{} + x; }

FGDKERN_INLINE Vec vabs(const Vec& x) {
  return reinterpret_cast<Vec>(reinterpret_cast<Mask>(x) & 0x7fffffff);
}

// sign(0) = 0
FGDKERN_INLINE Vec vsign(const Vec& x) {
  return (x > 0.0f ? splat(1.0f) : Vec{}) - (x < 0.0f ? splat(1.0f) : Vec{});
}

// Lanes 0 .. n-1 set.
FGDKERN_INLINE Mask first_lanes(int64_t n) {
  Mask lane;
  for (int32_t l = 0; l < kLanes; ++l) lane[l] = l;
  return (lane - static_cast<int32_t>(n)) >> 31;  // all ones where lane < n
}

// x where the mask is set, else 0 (also when x is not finite).
FGDKERN_INLINE Vec keep(const Mask& m, const Vec& x) {
  return reinterpret_cast<Vec>(reinterpret_cast<Mask>(x) & m);
}

// ------------------------------------------------- element types <-> float
// Exact conversions of 16 lanes, written on the bits so that they vectorise:
// bfloat16 is the top half of a float; float16 goes through Giesen's
// renormalisation, whose float operations never see a denormal (so they stay
// exact under FlushDenormals below). Both round to nearest even, like c10.
using Bits = uint32_t __attribute__((vector_size(kLanes * sizeof(uint32_t))));
using Bits16 = uint16_t __attribute__((vector_size(kLanes * sizeof(uint16_t))));

template <typename scalar_t>
using Storage = std::conditional_t<std::is_same_v<scalar_t, float>, Vec, Bits16>;

FGDKERN_INLINE Vec as_vec(const Bits& b) { return reinterpret_cast<Vec>(b); }
FGDKERN_INLINE Bits as_bits(const Vec& v) { return reinterpret_cast<Bits>(v); }
FGDKERN_INLINE Bits splat_bits(uint32_t x) { return Bits{} + x; }

FGDKERN_INLINE Vec widen(const Vec& v, float) { return v; }

FGDKERN_INLINE Vec widen(const Bits16& h, c10::BFloat16) {
  return as_vec(__builtin_convertvector(h, Bits) << 16);
}

FGDKERN_INLINE Vec widen(const Bits16& h16, c10::Half) {
  const Bits h = __builtin_convertvector(h16, Bits);
  const Bits exponent = h & 0x7c00u, magnitude = ((h & 0x7fffu) << 13) + ((127u - 15u) << 23);
  const Bits inf_nan = magnitude + ((128u - 16u) << 23);
  const Vec subnormal = as_vec(magnitude + (1u << 23)) - as_vec(splat_bits(113u << 23));
  const Bits f = exponent == 0x7c00u ? inf_nan : exponent == 0u ? as_bits(subnormal) : magnitude;
  return as_vec(f | ((h & 0x8000u) << 16));
}

FGDKERN_INLINE Vec narrow(const Vec& v, float) { return v; }

FGDKERN_INLINE Bits16 narrow(const Vec& v, c10::BFloat16) {
  const Bits u = as_bits(v), rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return __builtin_convertvector(v != v ? splat_bits(0x7fc0u) : rounded, Bits16);
}

FGDKERN_INLINE Bits16 narrow(const Vec& v, c10::Half) {
  const Bits sign = as_bits(v) & 0x80000000u, f = as_bits(v) ^ sign;
  const Bits inf_nan = f > (255u << 23) ? splat_bits(0x7e00u) : splat_bits(0x7c00u);
  const Bits subnormal = as_bits(as_vec(f) + as_vec(splat_bits(126u << 23))) - (126u << 23);
  const Bits normal = (f + ((15u - 127u) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
  const Bits h = f >= (143u << 23) ? inf_nan : f < (113u << 23) ? subnormal : normal;
  return __builtin_convertvector(h | (sign >> 16), Bits16);
}

// x[i * step] for i < n as floats; the other lanes are 0. kFull: n == kLanes.
template <bool kUnit, bool kFull, typename scalar_t>
FGDKERN_INLINE Vec load(const scalar_t* x, int64_t step, int64_t n) {
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
FGDKERN_INLINE void store(scalar_t* x, int64_t step, int64_t n, const Vec& v) {
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

// s = a + b rounded, and e = (a + b) - s exactly (Knuth's TwoSum; any |a|, |b|).
FGDKERN_INLINE Vec two_sum(const Vec& a, const Vec& b, Vec& e) {
  const Vec s = a + b, b_part = s - a;
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

// Sum of the lanes as a fixed tree: lanes i and i + 8 first, then halves again.
FGDKERN_INLINE float lane_sum(const Vec& v) {
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

}  // namespace fgdkern::cpu
