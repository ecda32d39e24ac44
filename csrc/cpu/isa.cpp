// fgdkern::cpu_isas_cpp, cpu_isa_cpp, set_cpu_isa_cpp: which variants of the
// CPU kernels this CPU runs, which one runs now, and the choice (isa.h).
#include "isa.h"

#include <torch/library.h>

#include <atomic>

namespace fgdkern::cpu {
namespace {

constexpr const char* kNames[] = {"baseline", "avx2", "avx512"};

bool supported(Isa isa) {
#if defined(FGDKERN_X86_VARIANTS)
  switch (isa) {
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == Isa::kBaseline;
#endif
}

// The CPU's variants, best first.
std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (supported(isa)) out.push_back(isa);
  }
  return out;
}

std::atomic<int>& chosen() {
  static std::atomic<int> isa{static_cast<int>(supported_isas().front())};
  return isa;
}

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  for (Isa isa : supported_isas()) out.emplace_back(kNames[static_cast<int>(isa)]);
  return out;
}

std::string cpu_isa() { return kNames[static_cast<int>(active_isa())]; }

void set_cpu_isa(const std::string& name) {
  for (Isa isa : supported_isas()) {
    if (name == kNames[static_cast<int>(isa)]) {
      chosen().store(static_cast<int>(isa));
      return;
    }
  }
  TORCH_CHECK(false, "fgdkern: this CPU does not run the '", name, "' variant of the kernels; ",
              "it runs ", c10::Join(", ", cpu_isas()));
}

}  // namespace

Isa active_isa() { return static_cast<Isa>(chosen().load(std::memory_order_relaxed)); }

}  // namespace fgdkern::cpu

TORCH_LIBRARY_IMPL(fgdkern, CompositeExplicitAutograd, m) {
  m.impl("cpu_isas_cpp", &fgdkern::cpu::cpu_isas);
  m.impl("cpu_isa_cpp", &fgdkern::cpu::cpu_isa);
  m.impl("set_cpu_isa_cpp", &fgdkern::cpu::set_cpu_isa);
}
