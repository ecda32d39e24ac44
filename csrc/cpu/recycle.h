// Recycled gradient buffers of the CPU passes (docs/cpu.md, "Recycled
// gradient buffers").
//
// A gradient pass writes a tensor as large as the features (dS, dX) on every
// backward. A fresh allocation of that size is usually a fresh mapping from
// the OS, and the first write to each of its pages then costs a page fault and
// the kernel's zeroing of the page: on a RetinaNet pyramid that is more than
// the pass itself. A Recycler keeps the buffers it handed out and hands one out
// again once nothing but the recycler refers to it (the previous step's
// gradient, consumed and released), so a training loop writes its gradients
// into memory that is already mapped.
#pragma once

#include <ATen/ATen.h>

#include <mutex>
#include <vector>

namespace fgdkern::cpu {

class Recycler {
 public:
  // calls: a free buffer not taken by this many calls in a row is released (an
  // op that runs twice per backward, once per input, keeps two calls' worth).
  explicit Recycler(int calls = 1);

  // A tensor like empty_like(like): a free kept buffer of the same sizes,
  // strides and dtype when there is one, else a new one (kept from now on).
  at::Tensor empty_like(const at::Tensor& like);

  // Ends a call: releases the free buffers that the last `calls` calls did not take.
  void end_call();

  // Bytes of the buffers kept (free or held by a caller); release: the free
  // ones are released first.
  int64_t kept_bytes(bool release);

  // Ends the call when it goes out of scope, also when the op throws.
  struct Call {
    Recycler& recycler;
    ~Call() { recycler.end_call(); }
  };

 private:
  struct Kept {
    at::Tensor buffer;
    int idle;  // calls since it was last taken (0: taken by the current call)
  };
  const int calls_;
  std::mutex mutex_;
  std::vector<Kept> kept_;
};

// Bytes kept by every recycler, after releasing their free buffers when asked
// (the ops recycle_kept_bytes_cpp, recycle_release_cpp).
int64_t kept_bytes_all(bool release);

// Whether buffers are recycled: yes unless FGDKERN_RECYCLE=0 (read per call).
bool recycling_enabled();

}  // namespace fgdkern::cpu
