// The CPU kernels' ISA variants (docs/cpu.md, "CPU variants"). Every block
// kernel and small-math entry is compiled three times, for AVX-512, AVX2 and
// the baseline ISA, and one process-wide choice says which runs: the best the
// CPU has, or the one FGDKERN_CPU_ISA names (fgdkern/_ext.py sets it when the
// extension loads). Variants round differently (vector widths, and so orders of
// summation, differ, and AVX-512 and AVX2 contract a * b + c into one FMA), so the
// tests run each of them.
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#if defined(__GNUC__)
#define FGDKERN_INLINE inline __attribute__((always_inline))
// A lambda whose body must be compiled into its caller's variant.
#define FGDKERN_INLINE_LAMBDA __attribute__((always_inline))
#else
#define FGDKERN_INLINE inline
#define FGDKERN_INLINE_LAMBDA
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define FGDKERN_X86_VARIANTS 1
#define FGDKERN_TARGET(isa) __attribute__((target(isa), noinline))
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define FGDKERN_TARGET(isa) __attribute__((noinline))
#endif

namespace fgdkern::cpu {

enum class Isa : int { kBaseline, kAvx2, kAvx512 };

Isa active_isa();

template <Isa kIsa>
using IsaTag = std::integral_constant<Isa, kIsa>;

// f(IsaTag), compiled for one ISA: f and everything it calls are inlined into these
// (FGDKERN_INLINE, FGDKERN_INLINE_LAMBDA), so each holds its own copy of the code;
// the tag lets f pick what differs per variant (the sweeps' vector width, vec.h).
template <class F>
FGDKERN_TARGET("avx512f") decltype(auto) run_avx512(const F& f) {
  return f(IsaTag<Isa::kAvx512>{});
}
template <class F>
FGDKERN_TARGET("avx2,fma") decltype(auto) run_avx2(const F& f) { return f(IsaTag<Isa::kAvx2>{}); }
template <class F>
__attribute__((noinline)) decltype(auto) run_baseline(const F& f) {
  return f(IsaTag<Isa::kBaseline>{});
}

// f(IsaTag) in the active variant. f is a FGDKERN_INLINE_LAMBDA.
template <class F>
FGDKERN_INLINE decltype(auto) on_active_isa(const F& f) {
#if defined(FGDKERN_X86_VARIANTS)
  switch (active_isa()) {
    case Isa::kAvx512: return run_avx512(f);
    case Isa::kAvx2: return run_avx2(f);
    default: break;
  }
#endif
  return run_baseline(f);
}

}  // namespace fgdkern::cpu
