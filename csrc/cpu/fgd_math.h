// Small inline helpers of the fused FGD CPU passes (csrc/cpu/fgd.cpp): a
// 16-lane float vector, loads and stores that convert any element type to and
// from float, fixed-order lane sums, and the merges of per-block partials
// (online softmax, Chan's second moment). Every order of summation here is
// fixed, so results never depend on how work is split across threads.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

FGD_INLINE Vec vabs(Vec x) { return x < 0.0f ? -x : x; }

// sign(0) = 0
FGD_INLINE Vec vsign(Vec x) {
  return (x > 0.0f ? splat(1.0f) : Vec{}) - (x < 0.0f ? splat(1.0f) : Vec{});
}

// Lanes 0 .. n-1 set.
FGD_INLINE Mask first_lanes(int64_t n) {
  Mask lane;
  for (int32_t l = 0; l < kLanes; ++l) lane[l] = l;
  return lane < static_cast<int32_t>(n);
}

// x where the mask is set, else 0 (also when x is not finite).
FGD_INLINE Vec keep(Mask m, Vec x) { return m ? x : Vec{}; }

// x[i * step] for i < n as floats; the other lanes are 0. kFull: n == kLanes.
template <bool kUnit, bool kFull, typename scalar_t>
FGD_INLINE Vec load(const scalar_t* x, int64_t step, int64_t n) {
  Vec v;
  if constexpr (kUnit && kFull && std::is_same_v<scalar_t, float>) {
    std::memcpy(&v, x, sizeof v);
  } else {
    float a[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) {
      a[i] = (kFull || i < n) ? static_cast<float>(x[kUnit ? i : i * step]) : 0.0f;
    }
    std::memcpy(&v, a, sizeof v);
  }
  return v;
}

// x[i * step] = v[i] for i < n, converted to scalar_t.
template <bool kUnit, bool kFull, typename scalar_t>
FGD_INLINE void store(scalar_t* x, int64_t step, int64_t n, Vec v) {
  if constexpr (kUnit && kFull && std::is_same_v<scalar_t, float>) {
    std::memcpy(x, &v, sizeof v);
  } else {
    float a[kLanes];
    std::memcpy(a, &v, sizeof v);
    for (int64_t i = 0; i < (kFull ? kLanes : n); ++i) {
      x[kUnit ? i : i * step] = static_cast<scalar_t>(a[i]);
    }
  }
}

// Sum of the lanes as a fixed tree: (0+8, 1+9, ...), then halves again.
FGD_INLINE float lane_sum(Vec v) {
  float a[kLanes];
  std::memcpy(a, &v, sizeof v);
  for (int64_t w = kLanes / 2; w >= 1; w /= 2) {
    for (int64_t i = 0; i < w; ++i) a[i] += a[i + w];
  }
  return a[0];
}

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

}  // namespace fgdkern::cpu
