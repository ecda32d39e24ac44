// The rows of the small tables that the two imitation passes exchange
// (fgdkern/reference/imitation_passes.py), in order: fgdkern/rows.py's
// IMIT_PIX, IMIT_CHAN, IMIT_PIX_COEF and IMIT_CHAN_COEF. Each list names a row
// once, as its enumerator and as its name in fgdkern/rows.py;
// tests/cpu/test_imitation_cpp.py compares the names, through the op
// fgdkern::imitation_rows_cpp, with fgdkern.rows (the mechanism: rows.h).
// The kernels index as ImitPix::kAbsX, ImitChanCoef::kS, ...
#pragma once

#include <string>
#include <vector>

#include "rows.h"

namespace fgdkern::cpu {

// imitation_stats: pix (N, ImitPix::kRows, HW) and chan (N, ImitChan::kRows, C).
#define FGDKERN_IMIT_PIX(X) X(kAbsX, abs_x) X(kSumX, sum_x) X(kSqD, sq_d)
#define FGDKERN_IMIT_CHAN(X) X(kAbsX, abs_x) X(kSumX, sum_x)
// imitation_grad: pix_coef (N, ImitPixCoef::kRows, HW), chan_coef (N, ImitChanCoef::kRows, C).
#define FGDKERN_IMIT_PIX_COEF(X) X(kA, a) X(kB, b) X(kS, s)
#define FGDKERN_IMIT_CHAN_COEF(X) X(kW, w) X(kB, b) X(kS, s)

FGDKERN_ROW_TABLE(ImitPix, FGDKERN_IMIT_PIX);
FGDKERN_ROW_TABLE(ImitChan, FGDKERN_IMIT_CHAN);
FGDKERN_ROW_TABLE(ImitPixCoef, FGDKERN_IMIT_PIX_COEF);
FGDKERN_ROW_TABLE(ImitChanCoef, FGDKERN_IMIT_CHAN_COEF);

// "table.row" for every row of the four tables, tables in the order above,
// rows in enumerator order; tables named as in fgdkern/rows.py.
inline std::vector<std::string> imitation_row_names() {
  return row_names({
      FGDKERN_ROW_NAMES("IMIT_PIX", FGDKERN_IMIT_PIX),
      FGDKERN_ROW_NAMES("IMIT_CHAN", FGDKERN_IMIT_CHAN),
      FGDKERN_ROW_NAMES("IMIT_PIX_COEF", FGDKERN_IMIT_PIX_COEF),
      FGDKERN_ROW_NAMES("IMIT_CHAN_COEF", FGDKERN_IMIT_CHAN_COEF),
  });
}

#undef FGDKERN_IMIT_PIX
#undef FGDKERN_IMIT_CHAN
#undef FGDKERN_IMIT_PIX_COEF
#undef FGDKERN_IMIT_CHAN_COEF

}  // namespace fgdkern::cpu
