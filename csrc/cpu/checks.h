// Argument checks shared by the CPU ops over lists of levels. Every message
// starts with the op's name and names the argument and its level, e.g.
// "fgd_stats_cpp: T[1] must have the dtype of S[1] ...".
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <utility>

namespace fgdkern::cpu {

// S[l] and T[l]: (N, C, H, W) CPU tensors of one shape and one float dtype,
// with at least one channel and one pixel. s, t: what the op calls them
// (S and T for FGD, X and Y for the imitation passes).
inline void check_features(const char* op, const at::Tensor& S, const at::Tensor& T, size_t l,
                           const char* s = "S", const char* t = "T") {
  TORCH_CHECK(S.device().is_cpu() && T.device().is_cpu(), op, ": ", s, "[", l, "] and ", t, "[",
              l, "] must be CPU tensors, got ", S.device(), " and ", T.device());
  TORCH_CHECK(S.dim() == 4, op, ": ", s, "[", l, "] must be (N, C, H, W), got shape ", S.sizes());
  TORCH_CHECK(T.sizes() == S.sizes(), op, ": ", t, "[", l, "] must have the shape of ", s, "[", l,
              "] ", S.sizes(), ", got ", T.sizes());
  const at::ScalarType dtype = S.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op, ": ", s,
              "[", l, "] must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(T.scalar_type() == dtype, op, ": ", t, "[", l, "] must have the dtype of ", s, "[",
              l, "] (", dtype, "), got ", T.scalar_type());
  TORCH_CHECK(S.size(1) > 0 && S.size(2) * S.size(3) > 0, op, ": ", s, "[", l,
              "] needs at least one channel and one pixel, got shape ", S.sizes());
}

// name[l]: a float32 CPU tensor of the given shape (any strides).
inline void check_float(const char* op, const char* name, size_t l, const at::Tensor& x,
                        at::IntArrayRef shape) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.sizes() == shape, op,
              ": ", name, "[", l, "] must be a float32 CPU tensor of shape ", shape, ", got ",
              x.scalar_type(), " ", x.sizes(), " on ", x.device());
}

// Every list holds one tensor per level, L levels.
inline void check_levels(const char* op, size_t L, std::initializer_list<at::TensorList> lists) {
  for (const at::TensorList& list : lists) {
    TORCH_CHECK(list.size() == L, op, ": every list must hold one tensor per level; S has ", L,
                " levels, another list ", list.size());
  }
}

// The same with the lists named: the first gives the number of levels, and a
// list of another length is named, e.g. "X has 2 levels, w has 1".
inline void check_levels(const char* op,
                         std::initializer_list<std::pair<const char*, at::TensorList>> lists) {
  const auto& [first, levels] = *lists.begin();
  for (const auto& [name, list] : lists) {
    TORCH_CHECK(list.size() == levels.size(), op, ": every list must hold one tensor per level; ",
                first, " has ", levels.size(), " levels, ", name, " has ", list.size());
  }
}

// name: one positive finite number per level, L levels.
inline void check_positive_per_level(const char* op, const char* name, size_t L,
                                     at::ArrayRef<double> values) {
  TORCH_CHECK(values.size() == L, op, ": ", name, " must hold one value per level; S has ", L,
              " levels, ", name, " ", values.size());
  for (size_t l = 0; l < L; ++l) {
    TORCH_CHECK(std::isfinite(values[l]) && values[l] > 0.0, op, ": ", name,
                " must be positive and finite at every level; ", name, "[", l, "] is ",
                values[l]);
  }
}

}  // namespace fgdkern::cpu
