"""Compile every Triton kernel of fgdkern for a GPU without one, and report its resources.

    python -m tests.triton.offline [--arch 90 80 ...] [--jobs N]

For each kernel of the fgdkern.triton modules (every JITFunction whose name
ends in ``_kernel``) and each variant a launch can ask for -- feature dtype x
LAYOUT for the main kernels, one variant for the combine kernels -- it runs
``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` (ptxas of the triton
wheel; no GPU, no driver) and reads the cubin's resource usage with the
wheel's cuobjdump: registers per thread, stack and local memory; from the PTX
the widest global load of feature data (bytes per instruction); from the
TTGIR the layout conversions and stores of its storing loops. A kernel
that spills (stack or local memory above zero) fails the check. The compiled
code is what a real launch of the same constexprs, launch options and 16-byte
aligned tensors compiles, so this shows register pressure, spills and vector
width before any GPU runs it (docs/gpu.md, "Offline compile").

Runs in subprocesses without TRITON_INTERPRET (the interpreter replaces the
kernels by Python functions that cannot be compiled).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FEATURE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ARCHS = (90, 80)
# Scalar arguments of the kernels (launch-time ints, which no kernel may specialise on:
# fgdkern.triton.levels.RUNTIME_INTS); all other non-constexpr arguments are pointers:
# the level table, the float32 workspace, or feature maps.
SCALARS = {"L": "i32", "BLOCKS_PER_PROG": "i32", "g_stride": "i32"}
POINTERS = {"table": "*i64", "f32": "*fp32"}
SPILL = re.compile(r"STACK:(\d+).*?LOCAL:(\d+)")
# Global loads of feature data in the PTX: asynchronous copies to shared memory (their size
# in bytes), and plain loads of 16- or 32-bit words (vector count, bits); the 64-bit loads
# are of the int64 level table.
ASYNC_COPY = re.compile(r"cp\.async\.\w+\.shared\.global[^;]*?,\s*(0x[0-9a-f]+|\d+)\s*[,;]")
GLOBAL_LOAD = re.compile(r"ld\.global[.\w:]*?(?:\.v(\d))?\.[bfsu](16|32)\s")
REGS = re.compile(r"REG:(\d+)")


def kernels() -> list[tuple[str, str]]:
    """(module, name) of every Triton kernel of the package."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    import fgdkern.triton as pkg
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"fgdkern.triton.{info.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel")
                    and obj.__module__ == module.__name__):
                found.append((module.__name__, name))
    return sorted(found)


def variants(module: str, name: str) -> list[dict]:
    """The (dtype, constexprs) variants of a kernel that launches compile."""
    import torch
    from fgdkern.triton.levels import COMBINE_BLOCK_C, COMBINE_WARPS
    from fgdkern.triton.tiles import launch_align, tile_shape
    fn = getattr(importlib.import_module(module), name)
    args = fn.arg_names
    out = []
    if "BODY" in args:  # level_math: one variant per loss body
        from fgdkern.triton.level_math import BLOCK
        return [dict(dtype="fp32", constexprs=dict(LEVELS=8, BLOCK=BLOCK, BODY=body, **rows))
                for body, rows in _level_math_bodies()[name]]
    if module.startswith("fgdkern.triton.fgd_terms"):  # FGD's small math: 256, 2048 channels
        from fgdkern.triton.fgd_terms import blocks
        out = []
        for C in ((256, 2048) if "BLOCK_H" in args else (256,)):
            launch = blocks(C)
            warps = launch.pop("num_warps") if "BLOCK_H" in args else 4  # pixel kernel: 4
            out.append(dict(dtype="fp32", constexprs=launch, num_warps=warps))
        return out
    if module.startswith("fgdkern.triton.fkd_"):  # FKD's small math: one variant each
        fkd = importlib.import_module(module)
        blocks = {k: getattr(fkd, k) for k in ("BLOCK", "BLOCK_J", "BLOCK_I") if k in args}
        return [dict(dtype="fp32", num_warps=fkd.NUM_WARPS, constexprs=blocks)]
    if "LAYOUT" not in args:  # a combine kernel: float32 workspace only
        return [dict(dtype="fp32", constexprs=dict(LEVELS=8, BLOCK_C=COMBINE_BLOCK_C),
                     num_warps=COMBINE_WARPS)]
    for dtype, torch_name in FEATURE_DTYPES.items():
        for layout in (0, 1, 2):
            torch_dtype = getattr(torch, torch_name)
            block_c, block_hw, sector = tile_shape(torch_dtype, layout)
            out.append(dict(dtype=dtype, constexprs=dict(
                LEVELS=8, LAYOUT=layout, ALIGN=launch_align(torch_dtype, layout),
                BLOCK_C=block_c, BLOCK_HW=block_hw, SECTOR=sector)))
    return out


def _level_math_bodies() -> dict:
    """The bodies ("module:function") each level_math kernel runs, with their row counts."""
    from fgdkern.rows import CWD_CHAN, CWD_COEF, IMIT_PIX, IMIT_PIX_COEF, PKD_CHAN, PKD_COEF
    t = "fgdkern.triton."
    return {"level_sums_kernel": [(t + "cwd_stats:cwd_level_body", dict(ROWS=len(CWD_CHAN))),
                                  (t + "pkd_stats:pkd_level_body", dict(ROWS=len(PKD_CHAN))),
                                  (t + "pfi_math:pfi_level_body", dict(ROWS=len(IMIT_PIX)))],
            "map_items_kernel": [
                (t + "cwd_grad:cwd_coef_body", dict(ROWS_IN=len(CWD_CHAN), ROWS_OUT=len(CWD_COEF))),
                (t + "pkd_grad:pkd_coef_body", dict(ROWS_IN=len(PKD_CHAN), ROWS_OUT=len(PKD_COEF))),
                (t + "pfi_math:pfi_coef_body", dict(ROWS_IN=len(IMIT_PIX),
                                                    ROWS_OUT=len(IMIT_PIX_COEF)))]}


def _constexpr(value):
    """A variant's constexpr as the kernel takes it: a "module:function" body resolved."""
    if isinstance(value, str) and ":" in value:
        module, fn = value.split(":")
        return getattr(importlib.import_module(module), fn)
    return value


def compile_variant(module: str, name: str, variant: dict, arch: int):
    """The compiled kernel of one variant for sm_<arch>, as a launch compiles it when every
    tensor argument is 16-byte aligned (what PyTorch's allocators return): Triton then
    marks those pointers divisible by 16, which lets it vectorise loads."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fgdkern.triton.levels import MAX_REGISTERS, NUM_WARPS
    fn = getattr(importlib.import_module(module), name)
    consts = {k: _constexpr(v) for k, v in variant["constexprs"].items() if k in fn.arg_names}
    signature = {}
    for arg in fn.arg_names:
        if arg in consts:
            signature[arg] = "constexpr"
        else:
            signature[arg] = SCALARS.get(arg) or POINTERS.get(arg) or f"*{variant['dtype']}"
    aligned = {(i,): [["tt.divisibility", 16]]
               for i, arg in enumerate(fn.arg_names) if signature[arg].startswith("*")}
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=aligned)
    options = dict(num_warps=variant.get("num_warps", NUM_WARPS))
    if "LAYOUT" in consts:  # a main kernel: launched with maxnreg (levels.MAX_REGISTERS)
        options["maxnreg"] = MAX_REGISTERS
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_one(module: str, name: str, variant: dict, arch: int) -> dict:
    """Compiles one variant for sm_<arch>; returns its resource usage."""
    kernel = compile_variant(module, name, variant, arch)
    usage = _resource_usage(kernel.asm["cubin"])
    usage["vector_bytes"] = widest_load(kernel.asm["ptx"])
    usage["loops"] = chunk_loops(kernel.asm["ttgir"])
    fn = getattr(importlib.import_module(module), name)
    consts = variant["constexprs"]
    specialised = [p.name for p in fn.params if p.name in SCALARS and not p.do_not_specialize]
    return dict(kernel=name, arch=arch, dtype=variant["dtype"], body=consts.get("BODY"),
                layout=consts.get("LAYOUT"), specialised=specialised, **usage)


def widest_load(ptx: str) -> int:
    """Bytes of the widest global load one thread issues in a kernel's PTX (16: a 128-bit
    vector, the most one instruction moves)."""
    sizes = [int(x, 0) for x in ASYNC_COPY.findall(ptx)]
    sizes += [int(vec or 1) * int(bits) // 8 for vec, bits in GLOBAL_LOAD.findall(ptx)]
    return max(sizes, default=0)


def chunk_loops(ttgir: str) -> list[list[int]]:
    """[layout conversions, global stores] of each innermost loop of a kernel's TTGIR that
    stores (a main kernel's channel loops that write rows or dS). A conversion moves a
    tensor between thread layouts through shared memory, with barriers on both sides."""
    loops, open_loops, depth = [], [], 0
    for line in ttgir.splitlines():
        if "scf.for" in line:
            for outer in open_loops:
                outer[2] = False  # holds a loop: not innermost
            open_loops.append([depth, [0, 0], True])
        for loop in open_loops:
            loop[1][0] += "ttg.convert_layout" in line
            loop[1][1] += "tt.store" in line
        depth += line.count("{") - line.count("}")
        while open_loops and depth <= open_loops[-1][0]:
            _, counts, innermost = open_loops.pop()
            if innermost and counts[1]:
                loops.append(counts)
    return loops


def _resource_usage(cubin: bytes) -> dict:
    """Registers per thread, stack and local bytes of a cubin (cuobjdump -res-usage)."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    stack, local = (int(x) for x in SPILL.search(text).groups())
    return dict(registers=int(REGS.search(text).group(1)), stack=stack, local=local)


def _job(args: tuple) -> dict:
    return compile_one(*args)


def run(archs=ARCHS, jobs: int = 2) -> list[dict]:
    """Resource usage of every variant of every kernel for every arch."""
    todo = [(m, n, v, a) for m, n in kernels() for v in variants(m, n) for a in archs]
    env_ok = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(_job, todo))
    finally:
        if env_ok is not None:
            os.environ["TRITON_INTERPRET"] = env_ok


def table(rows: list[dict]) -> str:
    lines = [f"{'kernel':34} {'arch':>5} {'dtype':>5} {'layout':>6} {'regs':>5} {'stack':>6} "
             f"{'local':>6} {'load B':>6} {'conv/st':>7}"]
    for r in rows:
        layout = "-" if r["layout"] is None else r["layout"]
        lines.append(f"{r['kernel']:34} {'sm_' + str(r['arch']):>5} {r['dtype']:>5} "
                     f"{layout:>6} {r['registers']:>5} {r['stack']:>6} {r['local']:>6} "
                     f"{r['vector_bytes']:>6} {_worst_loop(r['loops']):>7}")
    return "\n".join(lines)


def _worst_loop(loops: list[list[int]]) -> str:
    return "/".join(str(x) for x in max(loops)) if loops else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = run(a.arch, a.jobs)
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    spilled = [r for r in rows if r["stack"] or r["local"]]
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
