// Per-block partial results and their merges. A block kernel reduces over its
// own pixels only; these helpers turn the partials of all blocks into the
// reductions over whole images, always reading the blocks in order and adding
// in double, so the result does not depend on how blocks met threads.
//   * sums of rows: added block by block, each row with its own weight;
//   * softmax-weighted sums: each block weights by exp(z - its own max), and
//     the merge rescales the blocks to one softmax (online softmax);
//   * centred second moments (and cross moments): merged with Chan's formula.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vec.h"

namespace fgdkern::cpu {

// sum[r * C + c] += weight(b, r) * part[b][r][c] for the blocks b = 0 .. nb-1
// in order; part holds nb blocks of rows x C floats.
template <class Weight>
void sum_blocks(const float* part, int64_t nb, int rows, int64_t C, const Weight& weight,
                double* sum) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* q = part + b * rows * C;
    for (int r = 0; r < rows; ++r) {
      const double w = weight(b, r);
      for (int64_t c = 0; c < C; ++c) sum[r * C + c] += w * q[r * C + c];
    }
  }
}

// A block's softmax sums were weighted by exp(z - max) with its own max;
// sum = sum of exp(z - max) over the block.
struct SoftmaxPart {
  float max, sum;
};

// w = exp(z - max z) over n values (w may be z); returns (max, sum of w).
inline SoftmaxPart softmax_weights(const float* z, int64_t n, float* w) {
  const float m = *std::max_element(z, z + n);
  double sum = 0.0;
  for (int64_t p = 0; p < n; ++p) {
    w[p] = std::exp(z[p] - m);
    sum += w[p];
  }
  return {m, static_cast<float>(sum)};
}

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

// Count, mean and centred second moment of one variable, merged block by
// block with Chan's formula (no cancellation when the mean is large).
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;

  FGDKERN_INLINE void merge(double n, double sum, double m2_block) {
    const double mean_block = sum / n, delta = mean_block - mean, total = count + n;
    mean += delta * (n / total);
    m2 += m2_block + delta * delta * (count * n / total);
    count = total;
  }
};

// Two variables x, y merged block by block: each one's Moments, and their centred
// cross moment, which gains delta_x delta_y count n / total as each second moment
// gains delta^2 count n / total (Chan's formula).
struct CoMoments {
  Moments x, y;
  double m_xy = 0.0;

  FGDKERN_INLINE void merge(double n, double sum_x, double sum_y, double m2_x_block,
                            double m2_y_block, double m_xy_block) {
    const double dx = sum_x / n - x.mean, dy = sum_y / n - y.mean;
    m_xy += m_xy_block + dx * dy * (x.count * n / (x.count + n));
    x.merge(n, sum_x, m2_x_block);
    y.merge(n, sum_y, m2_y_block);
  }
};

}  // namespace fgdkern::cpu
