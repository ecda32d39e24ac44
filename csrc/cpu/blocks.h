// Work items of the CPU kernels and how they are spread over threads.
//
// A block is P consecutive pixels of one image of one level, all channels, P
// chosen from C alone. for_each_block runs a block kernel on every block of
// every level with at::parallel_for; each kernel writes its own per-block
// partials, which the caller then merges in block order (partials.h), so the
// results are the same bits whatever the number of threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "tiles.h"
#include "vec.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#warning "fgdkern: built without -fopenmp, so at::parallel_for runs the CPU kernels on one thread"
#endif

namespace fgdkern::cpu {

// S and T of one block, counted as float32: a second sweep re-reads it from L2.
// At C = 256 that is 512 pixels, so the first sweep reads each channel of S and
// T as a 2 KiB run: the CPU's prefetchers get going on runs that long, and the
// RetinaNet gradient pass took 6.3-6.6 ms against 7.8-9.0 ms with 1 KiB runs
// (512 KiB tiles) on a 2-core Xeon with 2 MiB of L2 per core; 1.5 MiB tiles
// (3 KiB runs) were slower again (7.3-8.6 ms), the second sweep missing L2.
constexpr int64_t kTileBytes = 1024 * 1024;
constexpr int64_t kMaxBlock = 2048;

// Pixels per block: a tile of about kTileBytes, a multiple of the lane count.
// It depends on C alone, never on the number of threads.
inline int64_t block_pixels(int64_t C) {
  const int64_t p = kTileBytes / (2 * C * static_cast<int64_t>(sizeof(float))) / kLanes * kLanes;
  return std::clamp<int64_t>(p, kLanes, kMaxBlock);
}

// One level of one op call: S, T (and dS when the op writes it), sizes, the
// block split and the sweep order. A pass derives its own level from it.
struct Level {
  at::Tensor S, T, dS;
  int64_t N, C, HW;
  int64_t P, blocks;  // pixels per block, blocks per image
  Order order;

  Level(const at::Tensor& S_, const at::Tensor& T_, const at::Tensor& dS_)
      : S(S_), T(T_), dS(dS_), N(S_.size(0)), C(S_.size(1)), HW(S_.size(2) * S_.size(3)),
        P(block_pixels(C)), blocks((HW + P - 1) / P), order(sweep_order(S_, T_, dS_)) {}

  template <typename scalar_t>
  Tile<scalar_t> tile(int64_t n, int64_t p0, int64_t np) const {
    return {plane<const scalar_t>(S, n), plane<const scalar_t>(T, n),
            dS.defined() ? plane<scalar_t>(dS, n) : Plane<scalar_t>{}, C, p0, np};
  }

  // Pixels of block b of an image.
  int64_t block_size(int64_t b) const { return std::min(P, HW - b * P); }
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
        out.push_back({l, n, b * lv.P, lv.block_size(b), n * lv.blocks + b});
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

// kernel.operator()<scalar_t, order, V>(level, block, scratch) over every block
// of every level, in parallel, with denormals flushed, in the active ISA
// variant (isa.h) with its vectors V (vec.h); each thread gets scratch of scratch_floats.
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
        on_active_isa([&](auto isa) FGDKERN_INLINE_LAMBDA {
          using V = VecOf<kNativeLanes<decltype(isa)::value>>;
          kernel.template operator()<decltype(tag), decltype(order)::value, V>(lv, blocks[i],
                                                                               scratch.data());
        });
      });
    }
  });
}

// fn(i) for i = 0 .. count - 1, spread over the threads (for merges).
template <class Fn>
void parallel_each(int64_t count, const Fn& fn) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

// fn(level, n) for every image n of every level, spread over the threads.
template <class LevelT, class Fn>
void for_each_image(const std::vector<LevelT>& levels, const Fn& fn) {
  std::vector<std::pair<int64_t, int64_t>> images;  // (level, n)
  for (int64_t l = 0; l < static_cast<int64_t>(levels.size()); ++l) {
    for (int64_t n = 0; n < levels[l].N; ++n) images.emplace_back(l, n);
  }
  parallel_each(static_cast<int64_t>(images.size()),
                [&](int64_t i) { fn(levels[images[i].first], images[i].second); });
}

// The op's outputs: field F0 of every level, then F1 of every level, ...
// (fields: member pointers such as &StatsLevel::pix).
template <class LevelT, class... Fields>
std::vector<at::Tensor> outputs(const std::vector<LevelT>& levels, Fields... fields) {
  std::vector<at::Tensor> out;
  const auto add = [&](auto field) {
    for (const LevelT& lv : levels) out.push_back(lv.*field);
  };
  (add(fields), ...);
  return out;
}

}  // namespace fgdkern::cpu
