// Sweeps: one loop of per-element math run over every element of a tile.
//
// A Loop says what it reads and adds up. Per element (c, p) of a tile it gets
// s = S[c, p], t = T[c, p], its per-pixel inputs at p and its per-channel
// inputs at c (a vector V of lanes at a time: the variant's native width,
// vec.h; a loop's operator() is a template on V); it returns dS[c, p] (written when
// kWrites) and contributions to sums over channels per pixel
// (pix_out[k][p] +=) and over pixels per channel (chan_out[k][c] +=).
//
// A tile is swept either channels-outer (S, T with unit pixel stride) or
// pixels-outer (unit channel stride, or any strides with strided loads); both
// run the same loop. Every order of summation is fixed by the tile alone.
//
// Channels-outer, the sums over channels per pixel gain one group of lines at a
// time, C / kGroup additions in sequence. Those a loop marks in kCompensated
// (the ones that feed a softmax, e.g. mean_c |F| / temp) are compensated
// (TwoSum), each exact rounding error added up in an error row that is folded
// in after the sweep, so they are as precise as a pairwise sum
// (docs/kernels.md, "Precision"); the others are plain sums, which spares
// per row and group of lines TwoSum's five extra operations and the load,
// addition and store of the error row.
// Pixels-outer, they are register sums of C / W terms (W lanes) and a lane tree,
// and the sums over pixels are merged per block in double.
//
// A loop may reduce some per-channel rows by their maximum instead (kChanMax;
// e.g. a log-sum-exp's max before its sum): their outputs start at -inf, which
// the caller stores, and a NaN is dropped by the max (a pass that exponentiates
// meets it again in its sums).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "tiles.h"
#include "vec.h"

namespace fgdkern::cpu {

// Bit k of a row set: row k is in it (row_set(0, 2): rows 0 and 2).
template <class... Rows>
constexpr uint32_t row_set(Rows... rows) {
  return ((uint32_t{1} << rows) | ... | 0u);
}
constexpr uint32_t kAllRows = ~0u;

// kCompensated: the per-pixel sums (rows of pix_out, row_set) that are
// compensated channels-outer; every one unless the loop says otherwise.
// kChanMax: the per-channel rows (of chan_out) reduced by max.
template <int kPixIn_, int kChanIn_, int kPixOut_, int kChanOut_, bool kWrites_ = false,
          uint32_t kCompensated_ = kAllRows, uint32_t kChanMax_ = 0>
struct Loop {
  static constexpr int kPixIn = kPixIn_, kChanIn = kChanIn_;
  static constexpr int kPixOut = kPixOut_, kChanOut = kChanOut_;
  static constexpr bool kWrites = kWrites_;
  static constexpr uint32_t kCompensated = kCompensated_, kChanMax = kChanMax_;
  static_assert(kPixOut <= 32, "row_set has 32 rows");
  std::array<const float*, kPixIn> pix_in{};
  std::array<const float*, kChanIn> chan_in{};
  std::array<float*, kPixOut> pix_out{};
  std::array<float*, kChanOut> chan_out{};
};

// Lanes are consecutive elements of the inner axis (pixels when kPixInner,
// else channels), and the outer axis is taken kGroup lines at a time, so that
// the inner inputs and sums are loaded and stored once per group. Within a
// group, contributions add up in line order.
constexpr int kGroup = 4;
constexpr int64_t kAheadLines = 4;  // lines prefetched ahead

// Which of a loop's inputs and sums run along the inner and the outer axis.
template <bool kPixInner, class L, class V>
struct Axes {
  static constexpr int kInnerIn = kPixInner ? L::kPixIn : L::kChanIn;
  static constexpr int kOuterIn = kPixInner ? L::kChanIn : L::kPixIn;
  static constexpr int kInnerOut = kPixInner ? L::kPixOut : L::kChanOut;
  static constexpr int kOuterOut = kPixInner ? L::kChanOut : L::kPixOut;
  // Inner sum k is compensated (channels-outer sums per pixel that the loop marks).
  static constexpr bool compensated(int k) { return kPixInner && (L::kCompensated >> k & 1u); }
  // Inner (outer) reduction k is a max: a per-channel row of kChanMax.
  static constexpr bool inner_max(int k) { return !kPixInner && (L::kChanMax >> k & 1u); }
  static constexpr bool outer_max(int k) { return kPixInner && (L::kChanMax >> k & 1u); }
  using OuterIn = std::array<Vecs<kOuterIn, V>, kGroup>;
  using OuterSums = std::array<Vecs<kOuterOut, V>, kGroup>;
  using Errors = std::array<float*, kInnerOut>;

  static FGDKERN_INLINE const auto& inner_in(const L& f) {
    if constexpr (kPixInner) return f.pix_in; else return f.chan_in;
  }
  static FGDKERN_INLINE const auto& outer_in(const L& f) {
    if constexpr (kPixInner) return f.chan_in; else return f.pix_in;
  }
  static FGDKERN_INLINE const auto& inner_out(const L& f) {
    if constexpr (kPixInner) return f.pix_out; else return f.chan_out;
  }
  static FGDKERN_INLINE const auto& outer_out(const L& f) {
    if constexpr (kPixInner) return f.chan_out; else return f.pix_out;
  }
  static FGDKERN_INLINE V apply(const L& f, const V& s, const V& t, const Vecs<kInnerIn, V>& inner,
                                const Vecs<kOuterIn, V>& outer, Vecs<kInnerOut, V>& inner_add,
                                Vecs<kOuterOut, V>& outer_add) {
    if constexpr (kPixInner) return f(s, t, inner, outer, inner_add, outer_add);
    else return f(s, t, outer, inner, outer_add, inner_add);
  }
};

// Up to kGroup lines of S, T and dS along the inner axis: element i of line g
// at s[g][i * s_step]; s_next, t_next: the lines kAheadLines further on.
template <typename scalar_t>
struct Lines {
  std::array<const scalar_t*, kGroup> s, t, s_next, t_next;
  std::array<scalar_t*, kGroup> ds;
  int64_t s_step, t_step, ds_step;
};

template <bool kUnit>
FGDKERN_INLINE int64_t at(int64_t i, int64_t step) { return kUnit ? i : i * step; }

// a + b, or max(a, b) for a max row.
template <class V>
FGDKERN_INLINE V reduce(bool is_max, const V& a, const V& b) {
  return is_max ? (b > a ? b : a) : a + b;
}

// The empty reduction: 0, or -inf for a max row.
template <class V>
FGDKERN_INLINE V identity(bool is_max) {
  return is_max ? splat<V>(-INFINITY) : V{};
}

// Elements i .. i + n - 1 of G lines (n == the lane count when kFull).
// err: the error rows of the inner sums.
template <bool kPixInner, bool kUnit, bool kFull, int G, class V, class L, typename scalar_t>
FGDKERN_INLINE void lanes(const L& f, const Lines<scalar_t>& r, int64_t i, int64_t n,
                          const typename Axes<kPixInner, L, V>::OuterIn& outer,
                          typename Axes<kPixInner, L, V>::OuterSums& acc,
                          const typename Axes<kPixInner, L, V>::Errors& err) {
  using A = Axes<kPixInner, L, V>;
  Vecs<A::kInnerIn, V> inner;
  for (int k = 0; k < A::kInnerIn; ++k) {
    inner[k] = load<true, kFull, V>(A::inner_in(f)[k] + i, 1, n);
  }
  const MaskOf<V> live = first_lanes<V>(n);
  Vecs<A::kInnerOut, V> inner_sum;
  for (int k = 0; k < A::kInnerOut; ++k) inner_sum[k] = identity<V>(A::inner_max(k));
  for (int g = 0; g < G; ++g) {
    __builtin_prefetch(r.s_next[g] + at<kUnit>(i, r.s_step));
    __builtin_prefetch(r.t_next[g] + at<kUnit>(i, r.t_step));
    Vecs<A::kInnerOut, V> inner_add;
    Vecs<A::kOuterOut, V> outer_add;
    const V out = A::apply(f, load<kUnit, kFull, V>(r.s[g] + at<kUnit>(i, r.s_step), r.s_step, n),
                           load<kUnit, kFull, V>(r.t[g] + at<kUnit>(i, r.t_step), r.t_step, n),
                           inner, outer[g], inner_add, outer_add);
    for (int k = 0; k < A::kInnerOut; ++k) {
      inner_sum[k] = reduce(A::inner_max(k), inner_sum[k], inner_add[k]);
    }
    for (int k = 0; k < A::kOuterOut; ++k) {  // lanes past n add nothing
      const V& x = outer_add[k];
      const V add = kFull ? x : A::outer_max(k) ? (live ? x : identity<V>(true)) : keep(live, x);
      acc[g][k] = reduce(A::outer_max(k), acc[g][k], add);
    }
    if constexpr (L::kWrites) {
      store<kUnit, kFull>(r.ds[g] + at<kUnit>(i, r.ds_step), r.ds_step, n, out);
    }
  }
  for (int k = 0; k < A::kInnerOut; ++k) {  // the group's sums into the tile's, k by k
    float* sum = A::inner_out(f)[k] + i;
    if (A::compensated(k)) {
      V rounding;
      store<true, kFull>(sum, 1, n,
                         two_sum(load<true, kFull, V>(sum, 1, n), inner_sum[k], rounding));
      store<true, kFull>(err[k] + i, 1, n, load<true, kFull, V>(err[k] + i, 1, n) + rounding);
    } else {
      store<true, kFull>(sum, 1, n,
                         reduce(A::inner_max(k), load<true, kFull, V>(sum, 1, n), inner_sum[k]));
    }
  }
}

// Line j of a plane in the tile: channel j (kPixInner) or pixel j.
template <bool kPixInner, typename scalar_t, typename T>
FGDKERN_INLINE scalar_t* line(const Plane<scalar_t>& F, const Tile<T>& x, int64_t j) {
  return kPixInner ? F.pixel(x.p0) + j * F.sc : F.pixel(x.p0 + j);
}

// Outer lines o .. o + G - 1, all of the inner axis.
template <bool kPixInner, bool kUnit, int G, class V, class L, typename scalar_t>
FGDKERN_INLINE void group(const L& f, const Tile<scalar_t>& x, int64_t o,
                          const typename Axes<kPixInner, L, V>::Errors& err) {
  using A = Axes<kPixInner, L, V>;
  constexpr int64_t W = kLanesOf<V>;
  const int64_t n_outer = kPixInner ? x.C : x.np, n_inner = kPixInner ? x.np : x.C;
  Lines<scalar_t> r;
  r.s_step = kPixInner ? 1 : x.S.sc;
  r.t_step = kPixInner ? 1 : x.T.sc;
  r.ds_step = kPixInner ? 1 : x.dS.sc;
  typename A::OuterIn outer;
  for (int g = 0; g < G; ++g) {
    const int64_t ahead = std::min(o + g + kAheadLines, n_outer - 1);
    r.s[g] = line<kPixInner>(x.S, x, o + g);
    r.t[g] = line<kPixInner>(x.T, x, o + g);
    r.s_next[g] = line<kPixInner>(x.S, x, ahead);
    r.t_next[g] = line<kPixInner>(x.T, x, ahead);
    r.ds[g] = L::kWrites ? line<kPixInner>(x.dS, x, o + g) : nullptr;
    for (int k = 0; k < A::kOuterIn; ++k) outer[g][k] = splat<V>(A::outer_in(f)[k][o + g]);
  }
  typename A::OuterSums acc;
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < A::kOuterOut; ++k) acc[g][k] = identity<V>(A::outer_max(k));
  }
  int64_t i = 0;
  for (; i + W <= n_inner; i += W) lanes<kPixInner, kUnit, true, G, V>(f, r, i, W, outer, acc, err);
  if (i < n_inner) lanes<kPixInner, kUnit, false, G, V>(f, r, i, n_inner - i, outer, acc, err);
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < A::kOuterOut; ++k) {
      float& out = A::outer_out(f)[k][o + g];
      out = A::outer_max(k) ? std::max(out, lane_max(acc[g][k])) : out + lane_sum(acc[g][k]);
    }
  }
}

// Floats of scratch that sweep needs for loop L on tiles of C channels and np pixels.
template <class L>
constexpr int64_t sweep_scratch(int64_t, int64_t np) {
  return L::kPixOut * np;
}

// Runs loop f over every element of tile x in vectors V; scratch: sweep_scratch<L> floats.
template <Order kOrder, class V, class L, typename scalar_t>
FGDKERN_INLINE void sweep(const L& f, const Tile<scalar_t>& x, float* scratch) {
  constexpr bool kPixInner = kOrder == Order::kChannelsOuter;
  constexpr bool kUnit = kOrder != Order::kPixelsOuterStrided;
  using A = Axes<kPixInner, L, V>;
  const int64_t n_outer = kPixInner ? x.C : x.np, n_inner = kPixInner ? x.np : x.C;
  typename A::Errors err{};  // the error rows of the compensated sums, zeroed
  for (int k = 0; k < A::kInnerOut; ++k) {
    if (!A::compensated(k)) continue;
    err[k] = scratch + k * n_inner;
    std::fill_n(err[k], n_inner, 0.0f);
  }
  int64_t o = 0;
  for (; o + kGroup <= n_outer; o += kGroup) group<kPixInner, kUnit, kGroup, V>(f, x, o, err);
  for (; o < n_outer; ++o) group<kPixInner, kUnit, 1, V>(f, x, o, err);
  for (int k = 0; k < A::kInnerOut; ++k) {  // errors folded in; a sum that met inf or NaN keeps it
    if (!A::compensated(k)) continue;
    float* sum = A::inner_out(f)[k];
    for (int64_t i = 0; i < n_inner; ++i) sum[i] += std::isfinite(sum[i]) ? err[k][i] : 0.0f;
  }
}

}  // namespace fgdkern::cpu
