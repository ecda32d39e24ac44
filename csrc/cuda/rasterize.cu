// fgdkern::rasterize_boxes on CUDA: the fg/bg masks of every level
// (docs/fgd.md, "Masks from boxes").
// Inputs and outputs as in csrc/cpu/rasterize.cpp; a check of counts, then
// three launches, each over all levels and images. The float32 operations and
// their order are those of the CPU kernel (IEEE division, no fast math), so
// the floats are the same.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdio>
#include <vector>

namespace fgdkern {

// Defined in csrc/cpu/rasterize.cpp.
void check_rasterize_inputs(const at::Tensor& boxes, const at::Tensor& counts,
                            const at::Tensor& img_shapes, at::IntArrayRef level_sizes);

namespace {

constexpr int kMaxLevels = 16;
constexpr int kThreads = 256;
// Integer extents saturate at +-2^61 (a NaN maps to -2^61), as on CPU.
constexpr float kIndexLimit = 2305843009213693952.0f;

// Per level: map size, first cell in the flat (level, image, row, col) index, outputs.
struct Levels {
  int count;
  int64_t H[kMaxLevels], W[kMaxLevels], start[kMaxLevels + 1];
  float* fg[kMaxLevels];
  float* bg[kMaxLevels];
};

__device__ int64_t to_index(float x) {
  return static_cast<int64_t>(fminf(fmaxf(x, -kIndexLimit), kIndexLimit));
}

// A Python slice index on an axis of length n: negative counts from the end,
// then 0..n. x >= -2^61 (to_index), so x + n cannot overflow.
__device__ int slice_index(int64_t x, int64_t n) {
  return static_cast<int>(x < 0 ? max(x + n, int64_t{0}) : min(x, n));
}

// The painted cells first..last of the inclusive extent lo..hi on an axis of
// length n (step 4): clipped to 0..n-1, or with wrap the slice [lo:hi + 1]
// (docs/fgd.md, "Boxes across the top or left border"). Empty when
// first > last; both in -1..n.
__device__ int2 painted_span(int64_t lo, int64_t hi, int64_t n, bool wrap) {
  if (wrap) return make_int2(slice_index(lo, n), slice_index(hi + 1, n) - 1);
  return make_int2(static_cast<int>(min(max(lo, int64_t{0}), n)),
                   static_cast<int>(min(max(hi, int64_t{-1}), n - 1)));
}

// Image n owns boxes box_begin .. box_end - 1: kept inside 0..K and, as first
// is non-decreasing (sums of counts clamped to 0..K), disjoint from the boxes
// of other images whatever the counts, so no two threads write one box.
__device__ int64_t box_begin(const int64_t* first, int64_t n, int64_t K) {
  return min(max(first[n], int64_t{0}), K);
}

__device__ int64_t box_end(const int64_t* first, int64_t n, int64_t K) {
  return min(max(first[n + 1], int64_t{0}), K);
}

// Pass 0, one thread: reads counts (N,); writes first (N + 1,), the running sums
// of the counts each clamped to 0..K, from 0. Stops with a device-side assertion
// unless every count is non-negative and they sum to K, the CPU kernel's check
// without a host sync. The checked running sum stays <= K, so it cannot overflow.
__global__ void box_starts_kernel(const int64_t* counts, int64_t N, int64_t K, int64_t* first) {
  int64_t sum = 0, at = 0;
  bool ok = true;
  first[0] = 0;
  for (int64_t n = 0; n < N; ++n) {
    ok = ok && counts[n] >= 0 && counts[n] <= K - sum;
    if (ok) sum += counts[n];
    at += min(max(counts[n], int64_t{0}), K);
    first[n + 1] = at;
  }
  ok = ok && sum == K;
  if (!ok) {
    printf("rasterize_boxes: counts must be non-negative and sum to the %lld rows of boxes\n",
           static_cast<long long>(K));
  }
  CUDA_KERNEL_ASSERT(ok && "rasterize_boxes: counts must be non-negative and sum to K");
}

// Pass 1, a thread per (level, image): reads the image's boxes first[n] ..
// first[n + 1] - 1 and its (h, w); writes each box's painted cells, rows
// r.x..r.y and columns r.z..r.w (painted_span; empty when r.x > r.y or
// r.z > r.w), and its value v from the unclipped extent.
__global__ void box_paint_kernel(const float* boxes, const int64_t* first, const float* img_hw,
                                 int64_t N, int64_t K, Levels lv, bool wrap, int4* range,
                                 float* value) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= lv.count * N) return;
  const int64_t l = t / N, n = t % N, H = lv.H[l], W = lv.W[l];
  const float h = img_hw[2 * n], w = img_hw[2 * n + 1];
  const float fH = static_cast<float>(H), fW = static_cast<float>(W);
  for (int64_t k = box_begin(first, n, K); k < box_end(first, n, K); ++k) {
    const float* box = boxes + 4 * k;
    const int64_t wmin = to_index(floorf(box[0] / w * fW));
    const int64_t hmin = to_index(floorf(box[1] / h * fH));
    const int64_t wmax = to_index(ceilf(box[2] / w * fW));
    const int64_t hmax = to_index(ceilf(box[3] / h * fH));
    value[l * K + k] =
        1.0f / static_cast<float>(hmax + 1 - hmin) / static_cast<float>(wmax + 1 - wmin);
    const int2 rows = painted_span(hmin, hmax, H, wrap), cols = painted_span(wmin, wmax, W, wrap);
    range[l * K + k] = make_int4(rows.x, rows.y, cols.x, cols.y);
  }
}

// Pass 2, a thread per cell of every level and image: reads the painted cells
// and values of the image's boxes; writes fg, the largest v covering the cell.
__global__ void paint_fg_kernel(const int4* range, const float* value, const int64_t* first,
                                int64_t K, Levels lv) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= lv.start[lv.count]) return;
  int l = 0;
  while (t >= lv.start[l + 1]) ++l;
  const int64_t cell = t - lv.start[l], W = lv.W[l], HW = lv.H[l] * W;
  const int64_t n = cell / HW, i = cell % HW / W, j = cell % W;
  float v = 0.0f;
  for (int64_t k = l * K + box_begin(first, n, K); k < l * K + box_end(first, n, K); ++k) {
    const int4 r = range[k];
    if (r.x <= i && i <= r.y && r.z <= j && j <= r.w) v = fmaxf(v, value[k]);
  }
  lv.fg[l][cell] = v;
}

// Pass 3, a block of kThreads per (level, image): reads fg; counts its zero cells
// N_bg (an exact integer sum) and writes bg = 1 / N_bg where fg == 0, else 0. Each
// thread counts its strided share with no barrier in the loop, so its loads overlap;
// the block then adds the counts (warp shuffles, one barrier).
__global__ void normalize_bg_kernel(int64_t N, Levels lv) {
  __shared__ int64_t warp_counts[kThreads / 32];
  const int64_t l = blockIdx.x / N, n = blockIdx.x % N, HW = lv.H[l] * lv.W[l];
  const float* fg = lv.fg[l] + n * HW;
  float* bg = lv.bg[l] + n * HW;
  int64_t count = 0;
  for (int64_t c = threadIdx.x; c < HW; c += blockDim.x) count += fg[c] == 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) {
    count += __shfl_down_sync(0xffffffffu, count, offset);
  }
  if (threadIdx.x % 32 == 0) warp_counts[threadIdx.x / 32] = count;
  __syncthreads();
  int64_t n_bg = 0;
  for (int w = 0; w < kThreads / 32; ++w) n_bg += warp_counts[w];
  const float inv = n_bg > 0 ? 1.0f / static_cast<float>(n_bg) : 0.0f;
  for (int64_t c = threadIdx.x; c < HW; c += blockDim.x) bg[c] = fg[c] == 0.0f ? inv : 0.0f;
}

unsigned int blocks_for(int64_t threads) {
  return static_cast<unsigned int>((threads + kThreads - 1) / kThreads);
}

std::vector<at::Tensor> rasterize_boxes_cuda(const at::Tensor& boxes, const at::Tensor& counts,
                                             const at::Tensor& img_shapes,
                                             at::IntArrayRef level_sizes, bool wrap) {
  check_rasterize_inputs(boxes, counts, img_shapes, level_sizes);
  const int64_t N = counts.size(0), K = boxes.size(0);
  const int L = static_cast<int>(level_sizes.size() / 2);
  TORCH_CHECK(L <= kMaxLevels, "rasterize_boxes: at most ", kMaxLevels, " levels on CUDA, got ", L);
  for (const int64_t s : level_sizes) {
    TORCH_CHECK(s <= INT32_MAX, "rasterize_boxes: level sizes must be < 2^31 on CUDA, got ", s);
  }
  const c10::cuda::CUDAGuard guard(boxes.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor b = boxes.contiguous(), hw = img_shapes.contiguous(), c = counts.contiguous();
  const at::Tensor first = at::empty({N + 1}, c.options());
  box_starts_kernel<<<1, 1, 0, stream>>>(c.data_ptr<int64_t>(), N, K, first.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Levels lv{};
  lv.count = L;
  std::vector<at::Tensor> out;
  for (int l = 0; l < L; ++l) {
    lv.H[l] = level_sizes[2 * l];
    lv.W[l] = level_sizes[2 * l + 1];
    lv.start[l + 1] = lv.start[l] + N * lv.H[l] * lv.W[l];
    out.push_back(at::empty({N, lv.H[l], lv.W[l]}, b.options()));
    out.push_back(at::empty({N, lv.H[l], lv.W[l]}, b.options()));
    lv.fg[l] = out[2 * l].data_ptr<float>();
    lv.bg[l] = out[2 * l + 1].data_ptr<float>();
  }
  if (lv.start[L] == 0) return out;
  const at::Tensor range = at::empty({L * K, 4}, b.options().dtype(at::kInt));
  const at::Tensor value = at::empty({L * K}, b.options());
  int4* range_ptr = reinterpret_cast<int4*>(range.data_ptr<int>());
  box_paint_kernel<<<blocks_for(L * N), kThreads, 0, stream>>>(
      b.data_ptr<float>(), first.data_ptr<int64_t>(), hw.data_ptr<float>(), N, K, lv, wrap,
      range_ptr, value.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  paint_fg_kernel<<<blocks_for(lv.start[L]), kThreads, 0, stream>>>(
      range_ptr, value.data_ptr<float>(), first.data_ptr<int64_t>(), K, lv);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  normalize_bg_kernel<<<static_cast<unsigned int>(L * N), kThreads, 0, stream>>>(N, lv);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace fgdkern

TORCH_LIBRARY_IMPL(fgdkern, CUDA, m) {
  m.impl("rasterize_boxes", &fgdkern::rasterize_boxes_cuda);
}
