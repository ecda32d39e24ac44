// The rows of the small tables that the two fused FGD passes exchange
// (docs/kernels.md, "The row tables"), in order. Each list
// names a row once, as its enumerator and as the name fgdkern/rows.py gives
// it; tests/cpu/test_fgd_rows_cpp.py compares the names, through the op
// fgdkern::fgd_rows_cpp, with fgdkern.rows (the mechanism: rows.h).
#pragma once

#include <string>
#include <vector>

#include "rows.h"

namespace fgdkern::cpu {

// fgd_stats: pix (N, kPixRows, HW) and chan (N, kChanRows, C).
#define FGDKERN_FGD_PIX(X) X(kGsS, gs_s) X(kGsT, gs_t) X(kZS, z_s) X(kZT, z_t)
#define FGDKERN_FGD_CHAN(X) \
  X(kGcS, gc_s) X(kGcT, gc_t) X(kCtxS, ctx_s) X(kCtxT, ctx_t) X(kSumD, sum_d) X(kM2D, m2_d) \
  X(kXFg, x_fg) X(kXBg, x_bg)
// fgd_grad: pix_coef (N, kPixCoefs, HW) and chan_coef (N, kChanCoefs, C).
#define FGDKERN_FGD_PIX_COEF(X) X(kASign, a_sign) X(kFgA, fgA) X(kBgA, bgA) X(kPS, p_s) X(kPT, p_t)
#define FGDKERN_FGD_CHAN_COEF(X) \
  X(kBSign, b_sign) X(kKD, k_d) X(kKConst, k_const) X(kKFg, k_fg) X(kKBg, k_bg) \
  X(kGCtxS, g_ctx_s) X(kGCtxT, g_ctx_t) X(kWS, w_s) X(kWT, w_t) X(kCtxCoefS, ctx_s) \
  X(kCtxCoefT, ctx_t)

enum PixRow { FGDKERN_FGD_PIX(FGDKERN_ROW_ENUMERATOR) kPixRows };
enum ChanRow { FGDKERN_FGD_CHAN(FGDKERN_ROW_ENUMERATOR) kChanRows };
enum PixCoef { FGDKERN_FGD_PIX_COEF(FGDKERN_ROW_ENUMERATOR) kPixCoefs };
enum ChanCoef { FGDKERN_FGD_CHAN_COEF(FGDKERN_ROW_ENUMERATOR) kChanCoefs };

// "table.row" for every row of the four tables, tables in the order above,
// rows in enumerator order; tables named as in fgdkern/rows.py.
inline std::vector<std::string> fgd_row_names() {
  return row_names({
      FGDKERN_ROW_NAMES("FGD_PIX", FGDKERN_FGD_PIX),
      FGDKERN_ROW_NAMES("FGD_CHAN", FGDKERN_FGD_CHAN),
      FGDKERN_ROW_NAMES("FGD_PIX_COEF", FGDKERN_FGD_PIX_COEF),
      FGDKERN_ROW_NAMES("FGD_CHAN_COEF", FGDKERN_FGD_CHAN_COEF),
  });
}

#undef FGDKERN_FGD_PIX
#undef FGDKERN_FGD_CHAN
#undef FGDKERN_FGD_PIX_COEF
#undef FGDKERN_FGD_CHAN_COEF

}  // namespace fgdkern::cpu
