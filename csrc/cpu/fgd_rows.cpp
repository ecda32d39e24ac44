// fgdkern::fgd_rows_cpp: the row names of the FGD passes' tables as the C++
// kernels index them (csrc/cpu/fgd_rows.h), so that a test can compare them
// with fgdkern/rows.py. It takes no tensor, so it is registered for every
// backend at once.
#include <torch/library.h>

#include "fgd_rows.h"

TORCH_LIBRARY_IMPL(fgdkern, CompositeExplicitAutograd, m) {
  m.impl("fgd_rows_cpp", &fgdkern::cpu::fgd_row_names);
}
