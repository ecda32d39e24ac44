// fgdkern::fgd_stats_cpp and fgdkern::fgd_grad_cpp: the two fused FGD passes
// on CPU (contract and notation: fgdkern/reference/fgd_passes.py).
//
// Work items are blocks: P consecutive pixels of one image of one level, all
// channels, P chosen from C alone. at::parallel_for spreads the blocks of
// every level over the threads; each block reads its tile of S and T twice
// (the second time from cache) and writes per-block partial sums; the
// partials are then merged per image (or per level) in block order, so the
// results are the same bits whatever the number of threads.
//
// A tile is swept either channels-outer (S, T with unit pixel stride, e.g.
// NCHW) or pixels-outer (unit channel stride, e.g. channels_last; any other
// strides take the pixels-outer sweep with strided loads). Both sweeps run
// the same per-element math on 16-lane vectors: the loops of fgd_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fgd_math.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#warning "fgdkern: built without -fopenmp, so at::parallel_for runs the FGD passes on one thread"
#endif

namespace fgdkern::cpu {
namespace {

// ------------------------------------------------------------------ tiles
// One image of S, T or dS: element (c, pixel p) at data[c * sc + offset(p)].
template <typename scalar_t>
struct Plane {
  scalar_t* data;
  int64_t sc, sh, sw, W;

  FGD_INLINE scalar_t* pixel(int64_t p) const { return data + (p / W) * sh + (p % W) * sw; }
};

template <typename scalar_t>
Plane<scalar_t> plane(const at::Tensor& F, int64_t n) {
  scalar_t* base = static_cast<scalar_t*>(F.data_ptr()) + n * F.stride(0);
  return {base, F.stride(1), F.stride(2), F.stride(3), F.size(3)};
}

// A block: pixels p0 .. p0 + np - 1 of one image, all C channels.
template <typename scalar_t>
struct Tile {
  Plane<const scalar_t> S, T;
  Plane<scalar_t> dS;  // written by loops with kWrites only
  int64_t C, p0, np;
};

enum class Order { kChannelsOuter, kPixelsOuter, kPixelsOuterStrided };

// ----------------------------------------------------------------- sweeps
// A sweep runs a loop over a tile along one of two axes: lanes are 16
// consecutive elements of the inner axis (pixels when kPixInner, else
// channels), and the outer axis is taken kGroup lines at a time, so that the
// inner inputs and sums are loaded and stored once per group. Within a group,
// contributions add up in line order.
constexpr int kGroup = 4;
constexpr int64_t kAheadLines = 4;  // lines prefetched ahead

// Which of a loop's inputs and sums run along the inner and the outer axis.
template <bool kPixInner, class L>
struct Axes {
  static constexpr int kInnerIn = kPixInner ? L::kPixIn : L::kChanIn;
  static constexpr int kOuterIn = kPixInner ? L::kChanIn : L::kPixIn;
  static constexpr int kInnerOut = kPixInner ? L::kPixOut : L::kChanOut;
  static constexpr int kOuterOut = kPixInner ? L::kChanOut : L::kPixOut;
  using OuterIn = std::array<Vecs<kOuterIn>, kGroup>;
  using OuterSums = std::array<Vecs<kOuterOut>, kGroup>;

  static FGD_INLINE const auto& inner_in(const L& f) {
    if constexpr (kPixInner) return f.pix_in; else return f.chan_in;
  }
  static FGD_INLINE const auto& outer_in(const L& f) {
    if constexpr (kPixInner) return f.chan_in; else return f.pix_in;
  }
  static FGD_INLINE const auto& inner_out(const L& f) {
    if constexpr (kPixInner) return f.pix_out; else return f.chan_out;
  }
  static FGD_INLINE const auto& outer_out(const L& f) {
    if constexpr (kPixInner) return f.chan_out; else return f.pix_out;
  }
  static FGD_INLINE Vec apply(const L& f, Vec s, Vec t, const Vecs<kInnerIn>& inner,
                              const Vecs<kOuterIn>& outer, Vecs<kInnerOut>& inner_add,
                              Vecs<kOuterOut>& outer_add) {
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
FGD_INLINE int64_t at(int64_t i, int64_t step) { return kUnit ? i : i * step; }

// Elements i .. i + n - 1 of G lines (n == kLanes when kFull).
template <bool kPixInner, bool kUnit, bool kFull, int G, class L, typename scalar_t>
FGD_INLINE void lanes(const L& f, const Lines<scalar_t>& r, int64_t i, int64_t n,
                      const typename Axes<kPixInner, L>::OuterIn& outer,
                      typename Axes<kPixInner, L>::OuterSums& acc) {
  using A = Axes<kPixInner, L>;
  Vecs<A::kInnerIn> inner;
  for (int k = 0; k < A::kInnerIn; ++k) inner[k] = load<true, kFull>(A::inner_in(f)[k] + i, 1, n);
  const Mask live = first_lanes(n);
  Vecs<A::kInnerOut> inner_sum{};
  for (int g = 0; g < G; ++g) {
    __builtin_prefetch(r.s_next[g] + at<kUnit>(i, r.s_step));
    __builtin_prefetch(r.t_next[g] + at<kUnit>(i, r.t_step));
    Vecs<A::kInnerOut> inner_add;
    Vecs<A::kOuterOut> outer_add;
    const Vec out = A::apply(f, load<kUnit, kFull>(r.s[g] + at<kUnit>(i, r.s_step), r.s_step, n),
                             load<kUnit, kFull>(r.t[g] + at<kUnit>(i, r.t_step), r.t_step, n),
                             inner, outer[g], inner_add, outer_add);
    for (int k = 0; k < A::kInnerOut; ++k) inner_sum[k] += inner_add[k];
    for (int k = 0; k < A::kOuterOut; ++k) {
      acc[g][k] += kFull ? outer_add[k] : keep(live, outer_add[k]);
    }
    if constexpr (L::kWrites) {
      store<kUnit, kFull>(r.ds[g] + at<kUnit>(i, r.ds_step), r.ds_step, n, out);
    }
  }
  for (int k = 0; k < A::kInnerOut; ++k) {
    float* sum = A::inner_out(f)[k] + i;
    store<true, kFull>(sum, 1, n, load<true, kFull>(sum, 1, n) + inner_sum[k]);
  }
}

// Line j of a plane in the tile: channel j (kPixInner) or pixel j.
template <bool kPixInner, typename scalar_t, typename T>
FGD_INLINE scalar_t* line(const Plane<scalar_t>& F, const Tile<T>& x, int64_t j) {
  return kPixInner ? F.pixel(x.p0) + j * F.sc : F.pixel(x.p0 + j);
}

// Outer lines o .. o + G - 1, all of the inner axis.
template <bool kPixInner, bool kUnit, int G, class L, typename scalar_t>
FGD_INLINE void group(const L& f, const Tile<scalar_t>& x, int64_t o) {
  using A = Axes<kPixInner, L>;
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
    for (int k = 0; k < A::kOuterIn; ++k) outer[g][k] = splat(A::outer_in(f)[k][o + g]);
  }
  typename A::OuterSums acc{};
  int64_t i = 0;
  for (; i + kLanes <= n_inner; i += kLanes) {
    lanes<kPixInner, kUnit, true, G>(f, r, i, kLanes, outer, acc);
  }
  if (i < n_inner) lanes<kPixInner, kUnit, false, G>(f, r, i, n_inner - i, outer, acc);
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < A::kOuterOut; ++k) A::outer_out(f)[k][o + g] += lane_sum(acc[g][k]);
  }
}

template <Order kOrder, class L, typename scalar_t>
FGD_INLINE void sweep(const L& f, const Tile<scalar_t>& x) {
  constexpr bool kPixInner = kOrder == Order::kChannelsOuter;
  constexpr bool kUnit = kOrder != Order::kPixelsOuterStrided;
  const int64_t n_outer = kPixInner ? x.C : x.np;
  int64_t o = 0;
  for (; o + kGroup <= n_outer; o += kGroup) group<kPixInner, kUnit, kGroup>(f, x, o);
  for (; o < n_outer; ++o) group<kPixInner, kUnit, 1>(f, x, o);
}

// ----------------------------------------------------------- work items
// S and T of one block, counted as float32: the second sweep re-reads it from L2.
constexpr int64_t kTileBytes = 512 * 1024;
constexpr int64_t kMaxBlock = 1024;

// Pixels per block: a tile of about kTileBytes, a multiple of the lane count.
// It depends on C alone, never on the number of threads.
int64_t block_pixels(int64_t C) {
  const int64_t p = kTileBytes / (2 * C * static_cast<int64_t>(sizeof(float))) / kLanes * kLanes;
  return std::clamp<int64_t>(p, kLanes, kMaxBlock);
}

// True when pixel p of an image lies at offset p (H and W flatten to stride 1).
bool unit_pixels(const at::Tensor& F) {
  return (F.size(3) == 1 || F.stride(3) == 1) && (F.size(2) == 1 || F.stride(2) == F.size(3));
}

bool unit_channels(const at::Tensor& F) { return F.size(1) == 1 || F.stride(1) == 1; }

// One level of one op call: S, T (and dS), sizes and the block split.
struct Level {
  at::Tensor S, T, dS;
  int64_t N, C, HW;
  int64_t P, blocks;  // pixels per block, blocks per image
  Order order;

  Level(const at::Tensor& S_, const at::Tensor& T_, const at::Tensor& dS_)
      : S(S_), T(T_), dS(dS_), N(S_.size(0)), C(S_.size(1)), HW(S_.size(2) * S_.size(3)),
        P(block_pixels(C)), blocks((HW + P - 1) / P) {
    bool pixels = unit_pixels(S) && unit_pixels(T), channels = unit_channels(S) && unit_channels(T);
    if (dS.defined()) {
      pixels = pixels && unit_pixels(dS);
      channels = channels && unit_channels(dS);
    }
    order = pixels && !(channels && C > HW) ? Order::kChannelsOuter
            : channels                       ? Order::kPixelsOuter
                                             : Order::kPixelsOuterStrided;
  }

  template <typename scalar_t>
  Tile<scalar_t> tile(int64_t n, int64_t p0, int64_t np) const {
    return {plane<const scalar_t>(S, n), plane<const scalar_t>(T, n),
            dS.defined() ? plane<scalar_t>(dS, n) : Plane<scalar_t>{}, C, p0, np};
  }
};

// index: the block's place among its level's blocks, n * blocks + b.
struct Block {
  int64_t level, n, p0, np, index;
};

template <class LevelT>
std::vector<Block> plan_blocks(const std::vector<LevelT>& levels) {
  std::vector<Block> out;
  for (int64_t l = 0; l < static_cast<int64_t>(levels.size()); ++l) {
    const Level& lv = levels[l];
    for (int64_t n = 0; n < lv.N; ++n) {
      for (int64_t b = 0; b < lv.blocks; ++b) {
        out.push_back({l, n, b * lv.P, std::min(lv.P, lv.HW - b * lv.P), n * lv.blocks + b});
      }
    }
  }
  return out;
}

// fn(scalar tag, order as an integral_constant) for a level's dtype and order.
template <class Fn>
void dispatch(at::ScalarType dtype, Order order, const Fn& fn) {
  const auto with_order = [&](auto tag) {
    using O = Order;
    switch (order) {
      case O::kChannelsOuter: return fn(tag, std::integral_constant<O, O::kChannelsOuter>{});
      case O::kPixelsOuter: return fn(tag, std::integral_constant<O, O::kPixelsOuter>{});
      default: return fn(tag, std::integral_constant<O, O::kPixelsOuterStrided>{});
    }
  };
  switch (dtype) {
    case at::kFloat: return with_order(float{});
    case at::kHalf: return with_order(at::Half{});
    case at::kBFloat16: return with_order(at::BFloat16{});
    default: TORCH_CHECK(false, "fgdkern: unsupported dtype ", dtype);
  }
}

// kernel(level, block, scratch) over every block of every level, in parallel;
// each thread gets scratch of scratch_floats.
template <class LevelT, class Kernel>
void for_each_block(const std::vector<LevelT>& levels, int64_t scratch_floats,
                    const Kernel& kernel) {
  const std::vector<Block> blocks = plan_blocks(levels);
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    std::vector<float> scratch(scratch_floats);
    for (int64_t i = begin; i < end; ++i) {
      const LevelT& lv = levels[blocks[i].level];
      dispatch(lv.S.scalar_type(), lv.order, [&](auto tag, auto order) {
        kernel.template operator()<decltype(tag), decltype(order)::value>(lv, blocks[i],
                                                                          scratch.data());
      });
    }
  });
}

// ------------------------------------------------------------ fgd_stats
enum PixRow { kGsS, kGsT, kZS, kZT, kPixRows };
enum ChanRow { kGcS, kGcT, kCtxS, kCtxT, kSumD, kM2D, kXFg, kXBg, kChanRows };

struct StatsLevel : Level {
  at::Tensor fg, bg, w_s, w_t;  // (N, HW), (N, HW), (C,), (C,) float32, contiguous
  float temp;
  at::Tensor pix, chan;         // outputs (N, 4, HW), (N, 8, C)
  at::Tensor part;              // per block: the 8 channel rows of its pixels
  mutable std::vector<SoftmaxPart> soft;  // per block: z_s, z_t, gs_t / temp

  using Level::Level;
};

// w = exp(z - max z) over a block's n pixels; returns (max, sum of w).
SoftmaxPart softmax_weights(const float* z, int64_t n, float* w) {
  const float m = *std::max_element(z, z + n);
  double sum = 0.0;
  for (int64_t p = 0; p < n; ++p) {
    w[p] = std::exp(z[p] - m);
    sum += w[p];
  }
  return {m, static_cast<float>(sum)};
}

// Between the two sweeps of a stats block: gs = sum / C, then the block-local
// softmax weights e_s, e_t of z_s, z_t and a_fg = fg a, a_bg = bg a with
// a = exp(gs_t / temp - m): rows of e, np floats each.
void block_weights(const StatsLevel& lv, const Block& b, float* pix, float* e,
                   SoftmaxPart* soft) {
  const int64_t HW = lv.HW, np = b.np;
  float *gs_s = pix + kGsS * HW, *gs_t = pix + kGsT * HW;
  float *a_fg = e + 2 * np, *a_bg = e + 3 * np;
  const float* fg = lv.fg.const_data_ptr<float>() + b.n * HW + b.p0;
  const float* bg = lv.bg.const_data_ptr<float>() + b.n * HW + b.p0;
  const float C = static_cast<float>(lv.C);
  for (int64_t p = 0; p < np; ++p) {
    gs_s[p] /= C;
    gs_t[p] /= C;
    a_fg[p] = gs_t[p] / lv.temp;
  }
  soft[0] = softmax_weights(pix + kZS * HW, np, e);
  soft[1] = softmax_weights(pix + kZT * HW, np, e + np);
  soft[2] = softmax_weights(a_fg, np, a_fg);
  for (int64_t p = 0; p < np; ++p) {
    a_bg[p] = bg[p] * a_fg[p];
    a_fg[p] *= fg[p];
  }
}

// Reads the block's tile of S and T twice; writes its 4 pixel rows and its
// partial channel rows (gc_s, gc_t, sum_d, then ctx_s, ctx_t, m2_d, x_fg, x_bg
// with block-local softmax weights and D centred on the block mean).
struct StatsBlock {
  template <typename scalar_t, Order kOrder>
  FGD_CPU_CLONES void operator()(const StatsLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C, HW = lv.HW, np = b.np;
    const Tile<scalar_t> x = lv.tile<scalar_t>(b.n, b.p0, np);
    float* pix = lv.pix.data_ptr<float>() + b.n * kPixRows * HW + b.p0;
    float* part = lv.part.data_ptr<float>() + b.index * kChanRows * C;
    for (int r = 0; r < kPixRows; ++r) std::fill_n(pix + r * HW, np, 0.0f);
    std::fill_n(part, kChanRows * C, 0.0f);

    StatsRows rows;
    rows.chan_in = {lv.w_s.const_data_ptr<float>(), lv.w_t.const_data_ptr<float>()};
    rows.pix_out = {pix + kGsS * HW, pix + kGsT * HW, pix + kZS * HW, pix + kZT * HW};
    rows.chan_out = {part + kGcS * C, part + kGcT * C, part + kSumD * C};
    sweep<kOrder>(rows, x);

    float* e = scratch;  // e_s, e_t, a_fg, a_bg
    float* mean_d = scratch + 4 * np;
    block_weights(lv, b, pix, e, lv.soft.data() + 3 * b.index);
    for (int64_t c = 0; c < C; ++c) mean_d[c] = part[kSumD * C + c] / static_cast<float>(np);

    StatsCols cols;
    cols.pix_in = {e, e + np, e + 2 * np, e + 3 * np};
    cols.chan_in = {mean_d};
    cols.chan_out = {part + kCtxS * C, part + kCtxT * C, part + kM2D * C, part + kXFg * C,
                     part + kXBg * C};
    sweep<kOrder>(cols, x);
  }
};

// chan of image n: its blocks' partial rows merged in block order, in double.
void merge_stats(const StatsLevel& lv, int64_t n) {
  const int64_t C = lv.C, HW = lv.HW, nb = lv.blocks;
  const float* part = lv.part.const_data_ptr<float>() + n * nb * kChanRows * C;
  const SoftmaxPart* soft = lv.soft.data() + n * nb * 3;
  std::vector<double> f_s(nb), f_t(nb), f_a(nb);
  softmax_factors(soft + 0, 3, nb, f_s.data());
  softmax_factors(soft + 1, 3, nb, f_t.data());
  softmax_factors(soft + 2, 3, nb, f_a.data());
  std::vector<double> sum(kChanRows * C, 0.0);
  std::vector<Moments> d(C);
  for (int64_t b = 0; b < nb; ++b) {
    const float* q = part + b * kChanRows * C;
    const double weight[kChanRows] = {1.0, 1.0, f_s[b], f_t[b], 1.0, 0.0, f_a[b], f_a[b]};
    for (int r = 0; r < kChanRows; ++r) {
      for (int64_t c = 0; c < C; ++c) sum[r * C + c] += weight[r] * q[r * C + c];
    }
    const double np = static_cast<double>(std::min(lv.P, HW - b * lv.P));
    for (int64_t c = 0; c < C; ++c) d[c].merge(np, q[kSumD * C + c], q[kM2D * C + c]);
  }
  for (int64_t c = 0; c < C; ++c) sum[kM2D * C + c] = d[c].m2;
  const double scale[kChanRows] = {1.0 / HW, 1.0 / HW, 1.0, 1.0, 1.0, 1.0, double(HW), double(HW)};
  float* out = lv.chan.data_ptr<float>() + n * kChanRows * C;
  for (int r = 0; r < kChanRows; ++r) {
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = static_cast<float>(sum[r * C + c] * scale[r]);
  }
}

// ------------------------------------------------------------- fgd_grad
enum PixCoef { kASign, kFgA, kBgA, kPS, kPT, kPixCoefs };
enum ChanCoef { kBSign, kKD, kKConst, kKFg, kKBg, kGCtxS, kGCtxT, kWS, kWT, kChanCoefs };

struct GradLevel : Level {
  at::Tensor pix_coef, chan_coef, K;  // (N, 5, HW), (N, 9, C), (N, 2) float32, contiguous
  at::Tensor dw_s, dw_t;              // outputs (C,)
  at::Tensor part;                    // per block: dz_s S and dz_t T summed over its pixels

  using Level::Level;
};

// Reads the block's tile of S and T twice; writes its tile of dS and its
// partial rows of dw_s, dw_t. Between the sweeps, per pixel:
// dz_s = p_s (gp_s - K_s), dz_t = p_t (gp_t - K_t).
struct GradBlock {
  template <typename scalar_t, Order kOrder>
  FGD_CPU_CLONES void operator()(const GradLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C, HW = lv.HW, np = b.np;
    const Tile<scalar_t> x = lv.tile<scalar_t>(b.n, b.p0, np);
    const float* pc = lv.pix_coef.const_data_ptr<float>() + b.n * kPixCoefs * HW + b.p0;
    const float* cc = lv.chan_coef.const_data_ptr<float>() + b.n * kChanCoefs * C;
    const float* K = lv.K.const_data_ptr<float>() + 2 * b.n;
    float* part = lv.part.data_ptr<float>() + b.index * 2 * C;
    float *dz_s = scratch, *dz_t = scratch + np;
    std::fill_n(scratch, 2 * np, 0.0f);
    std::fill_n(part, 2 * C, 0.0f);

    GradRows rows;
    rows.chan_in = {cc + kGCtxS * C, cc + kGCtxT * C};
    rows.pix_out = {dz_s, dz_t};
    sweep<kOrder>(rows, x);
    for (int64_t p = 0; p < np; ++p) {
      dz_s[p] = pc[kPS * HW + p] * (dz_s[p] - K[0]);
      dz_t[p] = pc[kPT * HW + p] * (dz_t[p] - K[1]);
    }

    GradCols cols;
    cols.pix_in = {pc + kASign * HW, pc + kFgA * HW, pc + kBgA * HW, pc + kPS * HW, dz_s, dz_t};
    cols.chan_in = {cc + kBSign * C, cc + kKD * C,    cc + kKConst * C, cc + kKFg * C,
                    cc + kKBg * C,   cc + kGCtxS * C, cc + kWS * C};
    cols.chan_out = {part, part + C};
    sweep<kOrder>(cols, x);
  }
};

// dw_s, dw_t of a level: its blocks' partial rows summed in block order, in double.
void merge_grad(const GradLevel& lv) {
  const int64_t C = lv.C, nb = lv.N * lv.blocks;
  const float* part = lv.part.const_data_ptr<float>();
  std::vector<double> sum(2 * C, 0.0);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t i = 0; i < 2 * C; ++i) sum[i] += part[b * 2 * C + i];
  }
  float *dw_s = lv.dw_s.data_ptr<float>(), *dw_t = lv.dw_t.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    dw_s[c] = static_cast<float>(sum[c]);
    dw_t[c] = static_cast<float>(sum[C + c]);
  }
}

// --------------------------------------------------------------- checks
void check_features(const char* op, const at::Tensor& S, const at::Tensor& T, size_t l) {
  TORCH_CHECK(S.device().is_cpu() && T.device().is_cpu(), op, ": S[", l, "] and T[", l,
              "] must be CPU tensors, got ", S.device(), " and ", T.device());
  TORCH_CHECK(S.dim() == 4, op, ": S[", l, "] must be (N, C, H, W), got shape ", S.sizes());
  TORCH_CHECK(T.sizes() == S.sizes(), op, ": T[", l, "] must have the shape of S[", l, "] ",
              S.sizes(), ", got ", T.sizes());
  const at::ScalarType dtype = S.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op, ": S[", l,
              "] must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(T.scalar_type() == dtype, op, ": T[", l, "] must have the dtype of S[", l, "] (",
              dtype, "), got ", T.scalar_type());
  TORCH_CHECK(S.size(1) > 0 && S.size(2) * S.size(3) > 0, op, ": S[", l,
              "] needs at least one channel and one pixel, got shape ", S.sizes());
}

void check_float(const char* op, const char* name, size_t l, const at::Tensor& x,
                 at::IntArrayRef shape) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.sizes() == shape, op,
              ": ", name, "[", l, "] must be a float32 CPU tensor of shape ", shape, ", got ",
              x.scalar_type(), " ", x.sizes(), " on ", x.device());
}

void check_levels(const char* op, size_t L, std::initializer_list<at::TensorList> lists) {
  for (const at::TensorList& list : lists) {
    TORCH_CHECK(list.size() == L, op, ": every list must hold one tensor per level; S has ", L,
                " levels, another list ", list.size());
  }
}

// ------------------------------------------------------------------ ops
std::vector<at::Tensor> fgd_stats_cpu(at::TensorList S, at::TensorList T, at::TensorList fg,
                                      at::TensorList bg, at::TensorList w_s, at::TensorList w_t,
                                      double temp) {
  const char* op = "fgd_stats_cpp";
  check_levels(op, S.size(), {T, fg, bg, w_s, w_t});
  TORCH_CHECK(std::isfinite(temp) && temp > 0.0, op, ": temp must be positive, got ", temp);
  std::vector<StatsLevel> levels;
  int64_t max_C = 0;
  for (size_t l = 0; l < S.size(); ++l) {
    check_features(op, S[l], T[l], l);
    StatsLevel& lv = levels.emplace_back(S[l], T[l], at::Tensor());
    const int64_t N = lv.N, C = lv.C, HW = lv.HW;
    check_float(op, "fg", l, fg[l], {N, S[l].size(2), S[l].size(3)});
    check_float(op, "bg", l, bg[l], {N, S[l].size(2), S[l].size(3)});
    check_float(op, "w_s", l, w_s[l], {C});
    check_float(op, "w_t", l, w_t[l], {C});
    lv.fg = fg[l].contiguous();
    lv.bg = bg[l].contiguous();
    lv.w_s = w_s[l].contiguous();
    lv.w_t = w_t[l].contiguous();
    lv.temp = static_cast<float>(temp);
    lv.pix = at::empty({N, kPixRows, HW}, S[l].options().dtype(at::kFloat));
    lv.chan = at::empty({N, kChanRows, C}, lv.pix.options());
    lv.part = at::empty({N * lv.blocks, kChanRows, C}, lv.pix.options());
    lv.soft.resize(N * lv.blocks * 3);
    max_C = std::max(max_C, C);
  }
  for_each_block(levels, 4 * kMaxBlock + max_C, StatsBlock{});
  std::vector<std::pair<int64_t, int64_t>> images;  // (level, n)
  for (size_t l = 0; l < levels.size(); ++l) {
    for (int64_t n = 0; n < levels[l].N; ++n) images.emplace_back(l, n);
  }
  at::parallel_for(0, static_cast<int64_t>(images.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) merge_stats(levels[images[i].first], images[i].second);
  });
  std::vector<at::Tensor> out;
  for (const StatsLevel& lv : levels) out.push_back(lv.pix);
  for (const StatsLevel& lv : levels) out.push_back(lv.chan);
  return out;
}

std::vector<at::Tensor> fgd_grad_cpu(at::TensorList S, at::TensorList T, at::TensorList pix_coef,
                                     at::TensorList chan_coef, at::TensorList K) {
  const char* op = "fgd_grad_cpp";
  check_levels(op, S.size(), {T, pix_coef, chan_coef, K});
  std::vector<GradLevel> levels;
  for (size_t l = 0; l < S.size(); ++l) {
    check_features(op, S[l], T[l], l);
    GradLevel& lv = levels.emplace_back(S[l], T[l], at::empty_like(S[l]));
    const int64_t N = lv.N, C = lv.C;
    check_float(op, "pix_coef", l, pix_coef[l], {N, kPixCoefs, lv.HW});
    check_float(op, "chan_coef", l, chan_coef[l], {N, kChanCoefs, C});
    check_float(op, "K", l, K[l], {N, 2});
    lv.pix_coef = pix_coef[l].contiguous();
    lv.chan_coef = chan_coef[l].contiguous();
    lv.K = K[l].contiguous();
    const at::TensorOptions f32 = S[l].options().dtype(at::kFloat);
    lv.dw_s = at::empty({C}, f32);
    lv.dw_t = at::empty({C}, f32);
    lv.part = at::empty({N * lv.blocks, 2, C}, f32);
  }
  for_each_block(levels, 2 * kMaxBlock, GradBlock{});
  at::parallel_for(0, static_cast<int64_t>(levels.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) merge_grad(levels[l]);
  });
  std::vector<at::Tensor> out;
  for (const GradLevel& lv : levels) out.push_back(lv.dS);
  for (const GradLevel& lv : levels) out.push_back(lv.dw_s);
  for (const GradLevel& lv : levels) out.push_back(lv.dw_t);
  return out;
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("fgd_stats_cpp", &fgdkern::cpu::fgd_stats_cpu);
  m.impl("fgd_grad_cpp", &fgdkern::cpu::fgd_grad_cpu);
}
