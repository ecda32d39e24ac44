// fgdkern::imitation_rows_cpp: the row names of the imitation passes' tables
// as the C++ kernels index them (csrc/cpu/imitation_rows.h), so that a test
// can compare them with fgdkern/rows.py. It takes no tensor, so it is
// registered for every backend at once.
#include <torch/library.h>

#include "imitation_rows.h"

TORCH_LIBRARY_IMPL(fgdkern, CompositeExplicitAutograd, m) {
  m.impl("imitation_rows_cpp", &fgdkern::cpu::imitation_row_names);
}
