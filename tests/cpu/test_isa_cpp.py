"""The ISA variants of the C++ kernels (docs/cpu.md, "CPU variants"): FGDKERN_CPU_ISA
chooses one the CPU runs and refuses any other with a message naming the variable;
fgdkern.cpu_isa() says which runs; and each variant is its own machine code.

That the variants compute what the contracts say is the rest of the suite's job: CI runs
the C++ kernel tests once per variant (Makefile, test-isa)."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fgdkern
from fgdkern import _ext
from tests.cpu.cpp_ops import needs_cpp

pytestmark = needs_cpp
RUNNABLE = torch.ops.fgdkern.cpu_isas_cpp() if fgdkern.HAS_EXT else []


def import_with(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FGDKERN_CPU_ISA=isa)
    return subprocess.run([sys.executable, "-c", "import fgdkern; print(fgdkern.cpu_isa())"],
                          capture_output=True, text=True, timeout=300, env=env)


def test_the_cpu_runs_the_baseline_and_the_active_variant():
    assert RUNNABLE[-1] == "baseline" and set(RUNNABLE) <= set(_ext.CPU_ISAS)
    assert RUNNABLE == [isa for isa in _ext.CPU_ISAS if isa in RUNNABLE]   # best first
    want = os.environ.get("FGDKERN_CPU_ISA") or RUNNABLE[0]
    assert fgdkern.cpu_isa() == want


@pytest.mark.parametrize("isa", _ext.CPU_ISAS)
def test_forced_variant_runs_or_is_refused(isa):
    run = import_with(isa)
    if isa in RUNNABLE:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == isa
    else:
        assert run.returncode != 0
        assert f"FGDKERN_CPU_ISA='{isa}': this CPU cannot run" in run.stderr


def test_unknown_variant_is_a_value_error_naming_the_variable():
    run = import_with("avx10")
    assert run.returncode != 0
    assert "ValueError: FGDKERN_CPU_ISA='avx10' is not a variant" in run.stderr
    with pytest.raises(ValueError, match="this CPU cannot run that variant.*runs avx2, baseline"):
        _ext.check_cpu_isa("avx512", ["avx2", "baseline"])
    assert _ext.check_cpu_isa("avx2", ["avx2", "baseline"]) == "avx2"
    with pytest.raises(RuntimeError, match="does not run the 'sse' variant"):
        torch.ops.fgdkern.set_cpu_isa_cpp("sse")
    assert fgdkern.cpu_isa() in RUNNABLE   # a refused choice changes nothing


def variant_bodies(library: str) -> dict:
    """{(variant, instantiation): disassembly} of every run_<variant> function of the
    library (cold parts, which hold the exception paths, left out)."""
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", library],
                          capture_output=True, text=True, check=True, timeout=300).stdout
    bodies, key = {}, None
    for line in dump.splitlines():
        head = re.match(r"[0-9a-f]+ <.*?fgdkern::cpu::run_(avx512|avx2|baseline)<(.*)>:$", line)
        if head:
            kernel = re.sub(r" \[clone [^]]*\]", "", head.group(2))
            key = None if "[clone .cold" in line else (head.group(1), kernel)
            bodies.setdefault(key, [])
        elif line.startswith(" ") and key:
            bodies[key].append(line)
        elif not line.strip():
            key = None
    bodies.pop(None, None)
    return {k: "\n".join(v) for k, v in bodies.items()}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the variants exist on x86-64 Linux")
def test_each_variant_is_compiled_for_its_isa():
    """A kernel body left out of line would run the same baseline code in every variant,
    and forcing one would test nothing: each variant's wrapper must hold the code itself."""
    bodies = variant_bodies(fgdkern._C.__file__)
    kernels = {k for _, k in bodies}
    assert len(kernels) >= 8, kernels   # 4 block kernels (x3 dtypes x3 orders), 4 small-math
    for kernel in kernels:
        for isa in _ext.CPU_ISAS:
            assert (isa, kernel) in bodies, (isa, kernel)
        zmm = {isa: "%zmm" in bodies[isa, kernel] for isa in _ext.CPU_ISAS}
        ymm = {isa: "%ymm" in bodies[isa, kernel] for isa in _ext.CPU_ISAS}
        assert zmm == {"avx512": True, "avx2": False, "baseline": False}, kernel
        assert ymm["avx2"] and not ymm["baseline"], kernel
