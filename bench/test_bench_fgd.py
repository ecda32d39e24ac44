"""pytest-benchmark timings of every FGD implementation at every case (bench/cases.py).

    .venv/bin/python -m pytest bench/test_bench_fgd.py --benchmark-only
    .venv/bin/python -m pytest bench/test_bench_fgd.py --benchmark-only -m "not slow"

Grouped by case and mode, so each table compares the implementations side by
side. Cases marked ``slow`` (the Faster R-CNN pyramid) take minutes for the
unfused implementations on CPU; ``-m "not slow"`` leaves them out. Not part of
the default test run (pytest's testpaths is tests/).
"""
import functools
import os

import pytest

import cases

DEVICE = cases.default_device()
CASES = [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.heavy else [])
         for c in cases.CASES.values()]


@functools.lru_cache(maxsize=1)
def runner(impl: str, case: cases.Case) -> cases.Runner:
    """The runner of the latest (impl, case): both modes reuse it, one set of inputs lives."""
    return cases.make_runner(impl, case, DEVICE)


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("impl", cases.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_fgd(benchmark, case, impl, mode):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the interpreter is never benchmarked")
    reason = cases.unavailable_reason(impl, DEVICE.type)
    if reason:
        pytest.skip(reason)
    call = cases.synchronized(runner(impl, case).calls[mode], DEVICE)
    call()  # warm-up (compiles, on the first call of torch.compile)
    benchmark.group = f"{case.name} {mode} ({DEVICE.type})"
    benchmark.extra_info.update(case=case.describe(), bytes=cases.feature_bytes(case, mode))
    benchmark(call)
