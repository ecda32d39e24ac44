"""pytest-benchmark timings of every FGD implementation at every case (bench/cases.py).

    .venv/bin/python -m pytest bench/test_bench_fgd.py --benchmark-only
    .venv/bin/python -m pytest bench/test_bench_fgd.py --benchmark-only -m "not slow"
    .venv/bin/python -m pytest bench/test_bench_fgd.py --benchmark-disable   # check, one call each

Grouped by case and mode, so each table compares the implementations side by
side. Before an implementation is timed, its first call is timed on its own
(torch.compile compiles there; ``extra_info["first_call_ms"]``) and its output
is checked against the reference (bench/checks.py): one that disagrees fails
and is not timed. Cases marked ``slow`` (the Faster R-CNN pyramid) take
minutes for the unfused implementations on CPU; ``-m "not slow"`` leaves them
out. Not part of the default test run (pytest's testpaths is tests/).
"""
import functools
import os

import pytest

import cases
from checks import Disagrees, check_outputs
from timing import first_call

DEVICE = cases.default_device()
CASES = [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.heavy else [])
         for c in cases.CASES.values()]


@functools.lru_cache(maxsize=1)
def runner(impl: str, case: cases.Case) -> cases.Runner:
    """The runner of the latest (impl, case): both modes reuse it, one set of inputs lives."""
    return cases.make_runner(impl, case, DEVICE)


@functools.lru_cache(maxsize=1)
def expected(case: cases.Case) -> dict:
    """The reference's outputs at the latest case (the tests run case by case)."""
    return cases.reference_outputs(case, DEVICE)


def first_checked_call(run: cases.Runner, case: cases.Case, mode: str) -> float:
    """Milliseconds of the first call of ``mode``; fails the test (nothing is timed)
    when its output disagrees with the reference."""
    out, ms = first_call(run.calls[mode], DEVICE)
    try:
        check_outputs(run.outputs(mode, out), expected(case)[mode])
    except Disagrees as exc:
        pytest.fail(f"{run.impl} {mode} at {case.name}: not timed, its output differs from "
                    f"the reference: {exc}", pytrace=False)
    return ms


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("impl", cases.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_fgd(benchmark, case, impl, mode):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the interpreter is never benchmarked")
    reason = cases.unavailable_reason(impl, DEVICE.type)
    if reason:
        pytest.skip(reason)
    run = runner(impl, case)
    first_ms = first_checked_call(run, case, mode)
    benchmark.group = f"{case.name} {mode} ({DEVICE.type})"
    benchmark.extra_info.update(case=case.describe(), bytes=cases.feature_bytes(case, mode),
                                first_call_ms=first_ms, implementation=run.implementation)
    benchmark(cases.synchronized(run.calls[mode], DEVICE))
