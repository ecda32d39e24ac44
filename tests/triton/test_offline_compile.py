"""Every Triton kernel compiles for sm_90 and sm_80 without register spills (no GPU needed).

tests/triton/offline.py compiles each kernel variant with triton.compile for a
GPUTarget and reads registers, stack and local memory from the cubin, and the
widest global load from the PTX; this
test runs it in a subprocess without TRITON_INTERPRET and prints the table
(pytest -s shows it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import INTERPRETED

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {"fgd_stats_fwd_kernel", "fgd_stats_combine_kernel", "fgd_grad_bwd_kernel",
           "fgd_grad_combine_kernel", "imitation_stats_fwd_kernel",
           "cwd_stats_fwd_kernel", "cwd_stats_combine_kernel", "cwd_grad_bwd_kernel",
           "pkd_stats_fwd_kernel", "pkd_stats_combine_kernel", "pkd_grad_bwd_kernel",
           "level_sums_kernel", "map_items_kernel", "fgd_terms_kernel", "fgd_pixel_coef_kernel",
           "fgd_terms_grad_kernel"}


def _tools_present() -> bool:
    try:
        import triton
    except ImportError:
        return False
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return (bin_dir / "ptxas").exists() and (bin_dir / "cuobjdump").exists()


@pytest.fixture(scope="module")
def usage(tmp_path_factory) -> list[dict]:
    if not _tools_present():
        pytest.skip("the triton wheel's ptxas / cuobjdump are missing")
    out = tmp_path_factory.mktemp("offline") / "usage.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.triton.offline", "--arch", "90", "80",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    print(proc.stdout)
    if not out.exists():
        pytest.fail(f"offline compile failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def test_every_kernel_variant_compiles_for_both_archs(usage):
    names = {r["kernel"] for r in usage}
    assert KERNELS <= names, KERNELS - names
    for name in names:
        rows = [r for r in usage if r["kernel"] == name]
        assert {r["arch"] for r in rows} == {90, 80}, name
        if any(r["layout"] is not None for r in rows):  # a main kernel: every variant
            assert {(r["dtype"], r["layout"]) for r in rows if r["arch"] == 90} == {
                (d, lay) for d in ("fp32", "fp16", "bf16") for lay in (0, 1, 2)}, name


def test_no_register_spills(usage):
    spilled = [r for r in usage if r["stack"] or r["local"]]
    assert not spilled, f"kernels that spill to local memory: {spilled}"
    assert all(0 < r["registers"] <= 255 for r in usage)


def test_aligned_levels_load_16_byte_vectors(usage):
    """Pixel- and channel-dense launches compile a path for aligned levels (tiles.py, "Aligned
    levels") whose tile loads move 16 bytes per instruction, in every dtype."""
    main = [r for r in usage if r["layout"] in (1, 2)]
    assert main
    narrow = [(r["kernel"], r["arch"], r["dtype"], r["layout"], r["vector_bytes"]) for r in main
              if r["vector_bytes"] != 16]
    assert not narrow, f"main kernels without 16-byte loads: {narrow}"


# Global stores per channel chunk of each main kernel's loops: its partial rows, stacked
# (merges.accumulate_rows), and dS or dX where it writes one. The channel passes' block
# loops store only dS: their statistics stay in registers over a run (sweeps.fold_rows).
CHUNK_STORES = {"fgd_stats_fwd_kernel": 1, "fgd_grad_bwd_kernel": 2,
                "imitation_stats_fwd_kernel": 1, "imitation_grad_bwd_kernel": 1,
                "cwd_grad_bwd_kernel": 1, "pkd_grad_bwd_kernel": 1}


def test_one_read_modify_write_of_the_rows_per_chunk(usage):
    """A channel chunk merges all its partial rows in one read-modify-write of a stacked
    tile: its loop stores once per output, with at most 3 layout conversions (merging row
    by row, FGD's statistics kernel took 9 conversions and 8 stores per chunk)."""
    rows = [r for r in usage if r["kernel"] in CHUNK_STORES]
    assert {r["kernel"] for r in rows} == set(CHUNK_STORES)
    worse = [(r["kernel"], r["arch"], r["dtype"], r["layout"], r["loops"]) for r in rows
             if not r["loops"] or any(stores > CHUNK_STORES[r["kernel"]] or conversions > 3
                                      for conversions, stores in r["loops"])]
    assert not worse, worse


def test_launch_ints_are_not_specialised(usage):
    """A new level count or image size (L, BLOCKS_PER_PROG of 1 or a multiple of 16) must not
    compile a new variant mid-run: no kernel specialises on them."""
    assert not [(r["kernel"], r["specialised"]) for r in usage if r["specialised"]]


@pytest.mark.skipif(not INTERPRETED, reason="checks the subprocess ignores the interpreter")
def test_runs_outside_the_interpreter(usage):
    assert usage, "no kernel was compiled"
