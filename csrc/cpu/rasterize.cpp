// fgdkern::rasterize_boxes on CPU: the fg/bg masks of every level
// (docs/fgd.md, "Masks from boxes").
// Reads boxes (sum K_n, 4) float32 xyxy, counts (N,) int64, img_shapes (N, 2)
// float32 (h, w), level_sizes [H0, W0, H1, W1, ...] and wrap (paint like a
// Python slice instead of clipping); writes [fg0, bg0, fg1, bg1, ...], each
// (N, H_l, W_l) float32. The float32 operations and their
// order are those of fgdkern/reference/masks.py, so the floats are the same.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace fgdkern {

// Shape, dtype and device checks shared with the CUDA kernel.
void check_rasterize_inputs(const at::Tensor& boxes, const at::Tensor& counts,
                            const at::Tensor& img_shapes, at::IntArrayRef level_sizes) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.scalar_type() == at::kFloat,
              "rasterize_boxes: boxes must be (K, 4) float32, got ", boxes.sizes(), " ",
              boxes.scalar_type());
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == at::kLong,
              "rasterize_boxes: counts must be (N,) int64, got ", counts.sizes(), " ",
              counts.scalar_type());
  TORCH_CHECK(img_shapes.dim() == 2 && img_shapes.size(0) == counts.size(0) &&
                  img_shapes.size(1) == 2 && img_shapes.scalar_type() == at::kFloat,
              "rasterize_boxes: img_shapes must be (N, 2) float32 with N = counts.size(0), got ",
              img_shapes.sizes(), " ", img_shapes.scalar_type());
  TORCH_CHECK(counts.device() == boxes.device() && img_shapes.device() == boxes.device(),
              "rasterize_boxes: boxes, counts and img_shapes must be on one device");
  TORCH_CHECK(level_sizes.size() % 2 == 0,
              "rasterize_boxes: level_sizes must be [H0, W0, H1, W1, ...], got ", level_sizes);
  for (const int64_t s : level_sizes) {
    TORCH_CHECK(s > 0, "rasterize_boxes: level sizes must be positive, got ", level_sizes);
  }
}

namespace {

// Integer extents saturate at +-2^61 (a NaN maps to -2^61), as in the reference.
constexpr float kIndexLimit = 2305843009213693952.0f;

int64_t to_index(float x) {
  return static_cast<int64_t>(std::fmin(std::fmax(x, -kIndexLimit), kIndexLimit));
}

// A Python slice index on an axis of length n: negative counts from the end,
// then 0..n. x >= -2^61 (to_index), so x + n cannot overflow.
int64_t slice_index(int64_t x, int64_t n) {
  return x < 0 ? std::max<int64_t>(x + n, 0) : std::min(x, n);
}

// The painted cells first..last of the inclusive extent lo..hi on an axis of
// length n (step 4): clipped to 0..n-1, or with wrap the slice [lo:hi + 1]
// (docs/fgd.md, "Boxes across the top or left border"). hi + 1 <= 2^61 + 1.
struct Span {
  int64_t first, last;
};

Span painted_span(int64_t lo, int64_t hi, int64_t n, bool wrap) {
  if (wrap) return {slice_index(lo, n), slice_index(hi + 1, n) - 1};
  return {std::max<int64_t>(lo, 0), std::min(hi, n - 1)};
}

// What one box paints on an H x W map: rows r0..r1 and columns c0..c1 (empty
// when r0 > r1 or c0 > c1) with the value v of the unclipped extent.
struct Paint {
  int64_t r0, r1, c0, c1;
  float v;
};

Paint box_paint(const float* box, float h, float w, int64_t H, int64_t W, bool wrap) {
  const float fH = static_cast<float>(H), fW = static_cast<float>(W);
  const int64_t wmin = to_index(std::floor(box[0] / w * fW));
  const int64_t hmin = to_index(std::floor(box[1] / h * fH));
  const int64_t wmax = to_index(std::ceil(box[2] / w * fW));
  const int64_t hmax = to_index(std::ceil(box[3] / h * fH));
  const float v = 1.0f / static_cast<float>(hmax + 1 - hmin) / static_cast<float>(wmax + 1 - wmin);
  const Span rows = painted_span(hmin, hmax, H, wrap), cols = painted_span(wmin, wmax, W, wrap);
  return {rows.first, rows.last, cols.first, cols.last, v};
}

// One (image, level) plane: reads the image's boxes [first, last), writes fg
// (the largest v covering each cell) and then bg (1 / N_bg where fg == 0).
void rasterize_plane(const float* boxes, int64_t first, int64_t last, float h, float w,
                     int64_t H, int64_t W, bool wrap, float* fg, float* bg) {
  std::fill(fg, fg + H * W, 0.0f);
  for (int64_t k = first; k < last; ++k) {
    const Paint p = box_paint(boxes + 4 * k, h, w, H, W, wrap);
    for (int64_t i = p.r0; i <= p.r1; ++i) {
      for (int64_t j = p.c0; j <= p.c1; ++j) {
        fg[i * W + j] = std::max(fg[i * W + j], p.v);
      }
    }
  }
  const int64_t n_bg = std::count(fg, fg + H * W, 0.0f);
  const float inv = n_bg > 0 ? 1.0f / static_cast<float>(n_bg) : 0.0f;
  for (int64_t c = 0; c < H * W; ++c) {
    bg[c] = fg[c] == 0.0f ? inv : 0.0f;
  }
}

std::vector<at::Tensor> rasterize_boxes_cpu(const at::Tensor& boxes, const at::Tensor& counts,
                                            const at::Tensor& img_shapes,
                                            at::IntArrayRef level_sizes, bool wrap) {
  check_rasterize_inputs(boxes, counts, img_shapes, level_sizes);
  const at::Tensor b = boxes.contiguous(), s = img_shapes.contiguous(), c = counts.contiguous();
  const int64_t N = c.size(0), K = b.size(0), L = static_cast<int64_t>(level_sizes.size()) / 2;
  std::vector<int64_t> first(N + 1, 0);  // image n owns boxes first[n] .. first[n + 1] - 1
  for (int64_t n = 0; n < N; ++n) {
    const int64_t k = c.data_ptr<int64_t>()[n];
    TORCH_CHECK(k >= 0, "rasterize_boxes: counts must be non-negative, got ", k);
    TORCH_CHECK(k <= K - first[n], "rasterize_boxes: counts sum to more than the ", K,
                " rows of boxes");  // so the sum never overflows
    first[n + 1] = first[n] + k;
  }
  TORCH_CHECK(first[N] == K, "rasterize_boxes: counts sum to ", first[N], " but boxes has ", K,
              " rows");
  std::vector<at::Tensor> out;
  for (int64_t l = 0; l < L; ++l) {
    for (int m = 0; m < 2; ++m) {
      out.push_back(at::empty({N, level_sizes[2 * l], level_sizes[2 * l + 1]}, b.options()));
    }
  }
  const float* box_data = b.data_ptr<float>();
  const float* hw = s.data_ptr<float>();
  at::parallel_for(0, L * N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t l = p / N, n = p % N, H = level_sizes[2 * l], W = level_sizes[2 * l + 1];
      rasterize_plane(box_data, first[n], first[n + 1], hw[2 * n], hw[2 * n + 1], H, W, wrap,
                      out[2 * l].data_ptr<float>() + n * H * W,
                      out[2 * l + 1].data_ptr<float>() + n * H * W);
    }
  });
  return out;
}

}  // namespace
}  // namespace fgdkern

TORCH_LIBRARY_IMPL(fgdkern, CPU, m) {
  m.impl("rasterize_boxes", &fgdkern::rasterize_boxes_cpu);
}
