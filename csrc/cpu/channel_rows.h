// The rows of the small tables that the per-channel passes of CWD and PKD
// exchange (fgdkern/reference/channel_passes.py), in order: fgdkern/rows.py's
// CWD_CHAN, CWD_COEF, PKD_CHAN and PKD_COEF. tests/cpu/test_channel_passes_cpp.py
// compares the names, through the op fgdkern::channel_rows_cpp, with
// fgdkern.rows (the mechanism: rows.h).
#pragma once

#include <string>
#include <vector>

#include "rows.h"

namespace fgdkern::cpu {

// cwd_stats: chan (N, CwdChan::kRows, C); cwd_grad reads coef (N, CwdCoef::kRows, C).
#define FGDKERN_CWD_CHAN(X) X(kLseS, lse_s) X(kLseT, lse_t) X(kKl, kl)
#define FGDKERN_CWD_COEF(X) X(kLseS, lse_s) X(kLseT, lse_t) X(kK, k)
// pkd_stats: chan (PkdChan::kRows, C); pkd_grad reads coef (PkdCoef::kRows, C).
#define FGDKERN_PKD_CHAN(X) \
  X(kMeanS, mean_s) X(kMeanT, mean_t) X(kM2S, m2_s) X(kM2T, m2_t) X(kMST, m_st)
#define FGDKERN_PKD_COEF(X) X(kA, a) X(kMeanS, mean_s) X(kB, b) X(kMeanT, mean_t)

FGDKERN_ROW_TABLE(CwdChan, FGDKERN_CWD_CHAN);
FGDKERN_ROW_TABLE(CwdCoef, FGDKERN_CWD_COEF);
FGDKERN_ROW_TABLE(PkdChan, FGDKERN_PKD_CHAN);
FGDKERN_ROW_TABLE(PkdCoef, FGDKERN_PKD_COEF);

// "table.row" for every row of the four tables, tables in the order above.
inline std::vector<std::string> channel_row_names() {
  return row_names({
      FGDKERN_ROW_NAMES("CWD_CHAN", FGDKERN_CWD_CHAN),
      FGDKERN_ROW_NAMES("CWD_COEF", FGDKERN_CWD_COEF),
      FGDKERN_ROW_NAMES("PKD_CHAN", FGDKERN_PKD_CHAN),
      FGDKERN_ROW_NAMES("PKD_COEF", FGDKERN_PKD_COEF),
  });
}

#undef FGDKERN_CWD_CHAN
#undef FGDKERN_CWD_COEF
#undef FGDKERN_PKD_CHAN
#undef FGDKERN_PKD_COEF

}  // namespace fgdkern::cpu
