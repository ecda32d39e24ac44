// fgdkern::imitation_stats_cpp: the statistics pass of the imitation losses
// (FKD, PFI) on CPU; contract and notation: fgdkern/reference/imitation_passes.py.
// Reads, per level l, X[l] and Y[l] (N, C, H, W) of one dtype (float32,
// float16 or bfloat16; any strides; Y may be X itself, then sq_d = 0) and the
// channel weights w[l] (N, C) float32. Writes pix[l] (N, 3, HW) with the rows
// abs_x = sum_c |X|, sum_x = sum_c X, sq_d = sum_c w (X - Y)^2, and chan[l]
// (N, 2, C) with the rows abs_x = sum_ij |X|, sum_x = sum_ij X (row order:
// imitation_rows.h, as fgdkern/rows.py). Returns [pix_0..pix_{L-1},
// chan_0..chan_{L-1}], float32.
//
// One sweep per block (blocks.h, sweeps.h) reads its tile of X and Y once.
// The sums over channels of the block's pixels are final. abs_x is
// compensated: it feeds softmax(abs_x / (C temp)), FKD's attention masks, so
// it must be good to about an ulp even for features of mean 1e3
// (docs/kernels.md, "Precision"). sum_x and sq_d are plain sums: on NCHW maps
// of 256 to 1024 channels they measured up to 3x (8x at mean 1e3) the float32
// contract's error against float64, within the harness's noise floor; listing
// them in StatsLoop's row_set compensates them too, at the cost sweeps.h
// names. The sums over pixels are per-block partials, merged per image in
// block order in double (partials.h). Every order of summation is fixed by
// the shapes alone, so the bits do not depend on the thread count. Math in
// float32; float32 denormals are read as 0 (blocks.h flushes them). Allocates
// no (N, C, H, W) buffer.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "blocks.h"
#include "checks.h"
#include "imitation_rows.h"
#include "partials.h"
#include "sweeps.h"

namespace fgdkern::cpu {
namespace {

using Pix = ImitPix;
using Chan = ImitChan;

// Per element x = X[c, p], y = Y[c, p] with its channel's weight w[c]: per
// pixel |x|, x, w (x - y)^2 and per channel |x|, x, each in its row's place;
// abs_x per pixel compensated.
struct StatsLoop : Loop<0, 1, Pix::kRows, Chan::kRows, false, row_set(Pix::kAbsX)> {
  template <class V>
  FGDKERN_INLINE V operator()(const V& x, const V& y, const Vecs<0, V>&, const Vecs<1, V>& w,
                              Vecs<Pix::kRows, V>& pix, Vecs<Chan::kRows, V>& chan) const {
    const V abs_x = vabs(x), d = x - y;
    pix[Pix::kAbsX] = abs_x;
    pix[Pix::kSumX] = x;
    pix[Pix::kSqD] = (d * d) * w[0];
    chan[Chan::kAbsX] = abs_x;
    chan[Chan::kSumX] = x;
    return V{};
  }
};

struct StatsLevel : Level {
  at::Tensor w;          // (N, C) float32, contiguous
  at::Tensor pix, chan;  // outputs (N, 3, HW), (N, 2, C)
  at::Tensor part;       // per block: the chan rows summed over its pixels

  using Level::Level;
};

// Reads the block's tile of X and Y once; writes its pixels' columns of pix
// and its partial chan rows.
struct StatsBlock {
  template <typename scalar_t, Order kOrder, class V>
  FGDKERN_INLINE void operator()(const StatsLevel& lv, const Block& b, float* scratch) const {
    const int64_t C = lv.C, HW = lv.HW;
    float* pix = lv.pix.data_ptr<float>() + b.n * Pix::kRows * HW + b.p0;
    float* part = lv.part.data_ptr<float>() + b.index * Chan::kRows * C;
    StatsLoop f;
    f.chan_in = {lv.w.const_data_ptr<float>() + b.n * C};
    for (int r = 0; r < Pix::kRows; ++r) {  // each pixel row, zeroed
      f.pix_out[r] = pix + r * HW;
      std::fill_n(f.pix_out[r], b.np, 0.0f);
    }
    for (int r = 0; r < Chan::kRows; ++r) f.chan_out[r] = part + r * C;  // each partial row
    std::fill_n(part, Chan::kRows * C, 0.0f);
    sweep<kOrder, V>(f, lv.tile<scalar_t>(b.n, b.p0, b.np), scratch);
  }
};

// chan of image n: its blocks' partial rows summed in block order, in double.
void merge_stats(const StatsLevel& lv, int64_t n) {
  const int64_t C = lv.C, nb = lv.blocks, size = Chan::kRows * C;
  std::vector<double> sum(size, 0.0);
  sum_blocks(lv.part.const_data_ptr<float>() + n * nb * size, nb, Chan::kRows, C,
             [](int64_t, int) { return 1.0; }, sum.data());
  float* out = lv.chan.data_ptr<float>() + n * size;
  for (int64_t i = 0; i < size; ++i) out[i] = static_cast<float>(sum[i]);  // each row element
}

// Level l of the op's arguments, checked, with its outputs allocated.
StatsLevel make_level(const char* op, size_t l, const at::Tensor& X, const at::Tensor& Y,
                      const at::Tensor& w) {
  check_features(op, X, Y, l, "X", "Y");
  StatsLevel lv(X, Y, at::Tensor());
  const int64_t N = lv.N, C = lv.C;
  check_float(op, "w", l, w, {N, C});
  lv.w = w.contiguous();
  const at::TensorOptions f32 = X.options().dtype(at::kFloat);
  lv.pix = at::empty({N, Pix::kRows, lv.HW}, f32);
  lv.chan = at::empty({N, Chan::kRows, C}, f32);
  lv.part = at::empty({N * lv.blocks, Chan::kRows, C}, f32);
  return lv;
}

std::vector<at::Tensor> imitation_stats_cpu(at::TensorList X, at::TensorList Y,
                                            at::TensorList w) {
  const char* op = "imitation_stats_cpp";
  check_levels(op, {{"X", X}, {"Y", Y}, {"w", w}});
  std::vector<StatsLevel> levels;
  for (size_t l = 0; l < X.size(); ++l) {  // each level, checked, its outputs allocated
    levels.push_back(make_level(op, l, X[l], Y[l], w[l]));
  }
  for_each_block(levels, sweep_scratch<StatsLoop>(0, kMaxBlock), StatsBlock{});
  for_each_image(levels, merge_stats);
  return outputs(levels, &StatsLevel::pix, &StatsLevel::chan);
}

}  // namespace
}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("imitation_stats_cpp", &fgdkern::cpu::imitation_stats_cpu);
}
