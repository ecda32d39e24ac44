// Recycler (recycle.h).
#include "recycle.h"

#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace fgdkern::cpu {
namespace {

constexpr size_t kMaxKept = 64;  // kept buffers, free or still held by a caller

// Nothing but the recycler refers to the buffer's memory: the tensor handed
// out, its views and anything holding them (Python objects, numpy arrays,
// autograd) each hold a reference to the storage.
bool is_free(const at::Tensor& buffer) { return buffer.storage().use_count() == 1; }

// A new tensor on the buffer's memory, with its sizes and strides. The
// buffer's own tensor is never handed out, so who holds a handed-out tensor
// (Python keeps the wrapper of a tensor alive while C++ holds it) never
// keeps the buffer from being free.
at::Tensor hand_out(const at::Tensor& buffer) {
  at::Tensor out = at::empty({0}, buffer.options());
  out.set_(buffer.storage(), buffer.storage_offset(), buffer.sizes(), buffer.strides());
  return out;
}

// empty_like(like) would have these sizes and strides (it keeps a dense
// tensor's strides; any other like is matched on a new tensor, `made`).
bool fits(const at::Tensor& buffer, const at::Tensor& like, const at::Tensor& made) {
  const at::Tensor& layout = made.defined() ? made : like;
  return buffer.scalar_type() == like.scalar_type() && buffer.device() == like.device() &&
         buffer.sizes() == layout.sizes() && buffer.strides() == layout.strides();
}

std::mutex registry_mutex;

std::vector<Recycler*>& registry() {  // every recycler, for kept_bytes_all
  static std::vector<Recycler*> recyclers;
  return recyclers;
}

}  // namespace

Recycler::Recycler(int calls) : calls_(calls) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry().push_back(this);
}

int64_t Recycler::kept_bytes(bool release) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (release) {
    std::vector<Kept> kept;
    for (Kept& k : kept_) {
      if (!is_free(k.buffer)) kept.push_back(std::move(k));
    }
    kept_ = std::move(kept);
  }
  int64_t bytes = 0;
  for (const Kept& k : kept_) bytes += static_cast<int64_t>(k.buffer.nbytes());
  return bytes;
}

int64_t kept_bytes_all(bool release) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  int64_t bytes = 0;
  for (Recycler* r : registry()) bytes += r->kept_bytes(release);
  return bytes;
}

bool recycling_enabled() {
  const char* value = std::getenv("FGDKERN_RECYCLE");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

at::Tensor Recycler::empty_like(const at::Tensor& like) {
  if (!recycling_enabled()) return at::empty_like(like);
  at::Tensor made;
  if (!like.is_non_overlapping_and_dense()) made = at::empty_like(like);
  std::lock_guard<std::mutex> lock(mutex_);
  for (Kept& k : kept_) {
    if (k.idle > 0 && fits(k.buffer, like, made) && is_free(k.buffer)) {
      k.idle = 0;
      return hand_out(k.buffer);
    }
  }
  if (!made.defined()) made = at::empty_like(like);
  if (kept_.size() == kMaxKept) kept_.erase(kept_.begin());  // forget the oldest
  kept_.push_back({made, 0});
  return hand_out(made);
}

void Recycler::end_call() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Kept> kept;
  for (Kept& k : kept_) {
    ++k.idle;
    if (k.idle <= calls_ || !is_free(k.buffer)) kept.push_back(std::move(k));
  }
  kept_ = std::move(kept);
}

}  // namespace fgdkern::cpu

namespace {
int64_t recycle_kept_bytes() { return fgdkern::cpu::kept_bytes_all(false); }
void recycle_release() { fgdkern::cpu::kept_bytes_all(true); }
}  // namespace

// They take no tensor, so they are registered for every backend at once.
TORCH_LIBRARY_IMPL(fgdkern, CompositeExplicitAutograd, m) {
  m.impl("recycle_kept_bytes_cpp", &recycle_kept_bytes);
  m.impl("recycle_release_cpp", &recycle_release);
}
