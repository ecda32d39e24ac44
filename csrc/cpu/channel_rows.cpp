// fgdkern::channel_rows_cpp: the row names of the CWD and PKD passes' tables as
// the C++ kernels index them (csrc/cpu/channel_rows.h), so that a test can
// compare them with fgdkern/rows.py. It takes no tensor, so it is registered
// for every backend at once.
#include <torch/library.h>

#include "channel_rows.h"

TORCH_LIBRARY_IMPL(fgdkern, CompositeExplicitAutograd, m) {
  m.impl("channel_rows_cpp", &fgdkern::cpu::channel_row_names);
}
