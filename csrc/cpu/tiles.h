// Views of the feature maps that CPU kernels read and write: one image of a
// (N, C, H, W) tensor as a plane of (channel, pixel) elements with any
// strides, a tile (some consecutive pixels, all channels) of the student S,
// the teacher T and the gradient dS, and the order in which a tile is swept,
// chosen from the strides.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "vec.h"

namespace fgdkern::cpu {

// One image of S, T or dS: element (c, pixel p) at data[c * sc + offset(p)].
template <typename scalar_t>
struct Plane {
  scalar_t* data;
  int64_t sc, sh, sw, W;

  FGDKERN_INLINE scalar_t* pixel(int64_t p) const { return data + (p / W) * sh + (p % W) * sw; }
};

// Image n of F, (N, C, H, W).
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

// kChannelsOuter: pixels are the inner (unit stride) axis, e.g. NCHW;
// kPixelsOuter: channels are, e.g. channels_last; kPixelsOuterStrided: neither.
enum class Order { kChannelsOuter, kPixelsOuter, kPixelsOuterStrided };

// True when pixel p of an image lies at offset p (H and W flatten to stride 1).
inline bool unit_pixels(const at::Tensor& F) {
  return (F.size(3) == 1 || F.stride(3) == 1) && (F.size(2) == 1 || F.stride(2) == F.size(3));
}

inline bool unit_channels(const at::Tensor& F) { return F.size(1) == 1 || F.stride(1) == 1; }

// The sweep order of tiles of S, T (and dS when defined): along whichever axis
// all of them have unit stride; pixels when both do, unless C > HW.
inline Order sweep_order(const at::Tensor& S, const at::Tensor& T, const at::Tensor& dS) {
  bool pixels = unit_pixels(S) && unit_pixels(T), channels = unit_channels(S) && unit_channels(T);
  if (dS.defined()) {
    pixels = pixels && unit_pixels(dS);
    channels = channels && unit_channels(dS);
  }
  const bool more_channels = S.size(1) > S.size(2) * S.size(3);
  return pixels && !(channels && more_channels) ? Order::kChannelsOuter
         : channels                              ? Order::kPixelsOuter
                                                 : Order::kPixelsOuterStrided;
}

}  // namespace fgdkern::cpu
