"""Time every available implementation of each loss side by side in one run; write JSON
and a plot.

    python bench/report.py [--quick] [--out DIR] [--device cpu|cuda] [--impls a,b,...]
                           [--losses fgd,fkd,pfi,rm,cwd,pkd,mgd] [--threads N] [--allow-dirty]

For each case of bench/cases.py and each implementation that runs here: its
output checked against the reference (bench/checks.py; one that disagrees is
not timed), the time of its first call (compilation included), median and
spread of the forward (under torch.no_grad) and of forward+backward, peak
memory of one call, speedup over the eager loop, and achieved GB/s against the
minimum bytes, next to the copy bandwidth measured in the same run. Then
sweeps of the forward+backward time over H*W, C and boxes per image. Writes
<DIR>/<device>-<date>.json and .png (bench/README.md explains every field).
Results go to bench/results/ only from a clean checkout, unless --allow-dirty.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

import cases
import meta
from checks import Disagrees, check_outputs
from timing import (copy_bandwidth_gbs, first_call, interleaved_ms, peak_memory_mb, release,
                    summary)

RESULTS = meta.REPO / "bench" / "results"
LOSSES = ("fgd", "fkd", "pfi", "rm", "cwd", "pkd", "mgd")


@dataclass(frozen=True)
class Plan:
    """How much to measure: warm-up calls, timed repetitions, and what --quick leaves out."""
    quick: bool
    warmup: int
    reps: int
    sweep_reps: int


def make_plan(quick: bool, device: torch.device) -> Plan:
    if device.type == "cuda":
        return Plan(quick, warmup=5, reps=20 if quick else 100, sweep_reps=10 if quick else 30)
    return Plan(quick, warmup=2, reps=5 if quick else 15, sweep_reps=5 if quick else 9)


# ------------------------------------------------------------------------ cases
REASON_CHARS = 200
DISAGREE_CHARS = 800


@dataclass
class Ready:
    """The warmed-up calls, checked against the reference, of the implementations that
    run at one case: (impl, mode) -> call and -> first-call ms; impl -> what runs."""
    calls: dict = field(default_factory=dict)
    first_ms: dict = field(default_factory=dict)
    implementations: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def skip(self, impl: str, case: cases.Case, reason: str, log, disagrees=False) -> None:
        self.calls = {k: c for k, c in self.calls.items() if k[0] != impl}
        self.skipped.append(dict(name=impl, case=case.name, reason=reason, disagrees=disagrees))
        log(f"  {impl}: {'NOT TIMED, ' if disagrees else 'skipped: '}{reason}")


def left_out(impl: str, case: cases.Case, plan: Plan, device: torch.device) -> str | None:
    """Why --quick does not time ``impl`` at ``case``, or None."""
    if plan.quick and device.type == "cpu" and case.heavy and impl in cases.SLOW_ON_CPU:
        return "--quick leaves the biggest case out for the slow implementations on CPU"
    return None


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:REASON_CHARS]}"


def warm_up_checked(runner: cases.Runner, mode: str, want: dict, device: torch.device,
                    plan: Plan) -> float:
    """The warm-up calls of one mode, the first timed (ms returned), every output
    checked against ``want`` (Disagrees names the mode)."""
    call = runner.calls[mode]
    out, ms = first_call(call, device)
    for k in range(plan.warmup):
        try:
            check_outputs(runner.outputs(mode, out if k == 0 else call()), want)
        except Disagrees as exc:
            raise Disagrees(f"output of {mode} differs from the reference: {exc}") from None
        out = None
    return ms


def prepare(ready: Ready, impl: str, case: cases.Case, modes, want: dict,
            device: torch.device, plan: Plan) -> None:
    runner = cases.make_runner(impl, case, device)
    ready.implementations[impl] = runner.implementation
    for mode in modes:
        ready.first_ms[impl, mode] = warm_up_checked(runner, mode, want[mode], device, plan)
        ready.calls[impl, mode] = runner.calls[mode]


def ready_calls(impls, case: cases.Case, modes, device: torch.device, plan: Plan, log) -> Ready:
    """The implementations that run at ``case``, built, checked and warmed up; one that
    fails (compilation, out of memory) or disagrees with the reference is skipped."""
    ready = Ready()
    todo = []
    for impl in impls:
        reason = left_out(impl, case, plan, device)
        if reason:
            ready.skip(impl, case, reason, log)
        else:
            todo.append(impl)
    try:
        want = cases.reference_outputs(case, device, modes) if todo else {}
    except Exception as exc:  # nothing to check against: nothing is timed
        for impl in todo:
            ready.skip(impl, case, f"the reference failed: {_error(exc)}", log)
        return ready
    for impl in todo:
        try:
            prepare(ready, impl, case, modes, want, device, plan)
        except Disagrees as exc:
            ready.skip(impl, case, str(exc)[:DISAGREE_CHARS], log, disagrees=True)
        except Exception as exc:  # recorded with its reason, the run goes on
            ready.skip(impl, case, _error(exc), log)
            release(device)
    return ready


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process: unchanged over the timed calls means
    every timed call of ``compile`` ran code compiled during its warm-up."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def measure_case(impls, case: cases.Case, device: torch.device, plan: Plan, log):
    """(entries, skipped) at one case: per implementation and mode what ran, the time of
    its first call, the steady-state time and spread, peak memory of one call, bytes."""
    log(f"{case.name}: {case.describe()}")
    ready = ready_calls(impls, case, cases.MODES, device, plan, log)
    graphs = compiled_graphs()
    times = interleaved_ms(ready.calls, device, plan.reps)
    recompiled = compiled_graphs() != graphs
    if recompiled:
        log("  warning: torch.compile compiled a new graph during the timed calls")
    entries = []
    for (impl, mode), call in ready.calls.items():
        entries.append(dict(name=impl, case=case.name, mode=mode,
                            implementation=ready.implementations[impl],
                            first_call_ms=ready.first_ms[impl, mode],
                            compiled_during_timing=recompiled and impl == "compile",
                            **summary(times[impl, mode]),
                            peak_mem_mb=peak_memory_mb(cases.synchronized(call, device), device),
                            bytes=cases.feature_bytes(case, mode)))
        e = entries[-1]
        log(f"  {impl:<10} {mode:<8} {e['median_ms']:10.2f} ms  "
            f"(first call {e['first_call_ms'] / 1e3:.2f} s)")
    return entries, ready.skipped


def run_cases(impls, device: torch.device, plan: Plan, log,
              losses=LOSSES) -> tuple[list[dict], list[dict]]:
    """(entries, skipped) over every case of ``losses``."""
    entries, skipped = [], []
    for case in (c for c in cases.CASES.values() if c.loss in losses):
        new, left = measure_case(impls, case, device, plan, log)
        entries += new
        skipped += left
        release(device)
    return entries, skipped


def add_ratios(entries: list[dict], copy_gbs: float) -> None:
    """Speedup over the eager loop at the same case and mode; GB/s; fraction of copy GB/s."""
    eager = {(e["case"], e["mode"]): e["median_ms"] for e in entries if e["name"] == "eager_loop"}
    for e in entries:
        base = eager.get((e["case"], e["mode"]))
        e["speedup_vs_eager_loop"] = base / e["median_ms"] if base else None
        e["gb_per_s"] = e["bytes"] / (e["median_ms"] * 1e-3) / 1e9
        e["fraction_of_copy_bw"] = e["gb_per_s"] / copy_gbs


def run_sweeps(impls, device: torch.device, plan: Plan, log) -> tuple[list[dict], list[dict]]:
    """(rows, skipped): forward+backward time over each sweep of cases.sweeps, all points
    of a sweep timed in turns (so a drift of the load does not bend the curves), every
    point checked against the reference first. compile is left out: it would compile
    every point anew."""
    impls = [i for i in impls if i != "compile"]
    rows, skipped = [], []
    for sweep, series in cases.sweeps(plan.quick).items():
        log(f"sweep over {sweep}")
        calls, info = {}, {}
        for x, case in series.points:
            ready = ready_calls(impls, case, ["fwd+bwd"], device, plan, log)
            skipped += [dict(s, sweep=sweep) for s in ready.skipped]
            for (impl, mode), call in ready.calls.items():
                calls[x, case.name, impl] = call
                info[x, case.name, impl] = dict(implementation=ready.implementations[impl],
                                                first_call_ms=ready.first_ms[impl, mode])
        for key, times in interleaved_ms(calls, device, plan.sweep_reps).items():
            x, name, impl = key
            rows.append(dict(sweep=sweep, x=x, case=name, name=impl, mode="fwd+bwd",
                             **info[key], **summary(times)))
            log(f"  {name:<14} {impl:<10} {rows[-1]['median_ms']:10.2f} ms")
        del calls
        release(device)
    return rows, skipped


# ------------------------------------------------------------------------ output
COLUMNS = [("case", "{}", "case"), ("mode", "{}", "mode"), ("name", "{}", "impl"),
           ("runs", "{}", "runs"), ("median_ms", "{:.2f}", "median ms"), ("iqr", "{}", "IQR ms"),
           ("first_call_s", "{:.2f}", "first call s"), ("peak_mem_mb", "{:.0f}", "peak MB"),
           ("speedup_vs_eager_loop", "{:.2f}x", "vs eager"), ("gb_per_s", "{:.1f}", "GB/s"),
           ("fraction_of_copy_bw", "{:.0%}", "of copy")]


def runs(implementation: dict) -> str:
    """What ran, short: the loss's implementation, '+inductor' when compiled."""
    name = (implementation.get("fgd") or implementation["op"]).split()[0]
    return name + ("+inductor" if implementation["compiled"] else "")


def _cell(entry: dict, key: str, fmt: str) -> str:
    if key == "iqr":
        s = entry["spread"]
        return f"{s['q25_ms']:.2f}-{s['q75_ms']:.2f}"
    if key == "runs":
        return runs(entry["implementation"])
    if key == "first_call_s":
        return fmt.format(entry["first_call_ms"] / 1e3)
    value = entry.get(key)
    return "-" if value is None else fmt.format(value)


def table(entries: list[dict]) -> str:
    """A Markdown table of the entries."""
    rows = [[h for _, _, h in COLUMNS]]
    rows += [[_cell(e, key, fmt) for key, fmt, _ in COLUMNS] for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def publishing(out_dir: Path) -> bool:
    """True when ``out_dir`` is bench/results/ (or inside it): the published results."""
    out, results = out_dir.resolve(), RESULTS.resolve()
    return out == results or results in out.parents


def refuse_dirty(state: dict, out_dir: Path, allow_dirty: bool, when: str) -> None:
    """Exit when results from a tree that is not a commit would go to bench/results/."""
    if publishing(out_dir) and not state["clean"] and not allow_dirty:
        sys.exit(f"{when} the working tree differs from its commit "
                 f"({meta.describe_dirty(state)}): bench/results/ takes results of a commit "
                 "only. Commit or stash the changes, write elsewhere with --out, or pass "
                 "--allow-dirty (recorded in the JSON).")


@contextmanager
def fresh_compile_caches():
    """Empty inductor and Triton cache folders for the run, so that a first call pays the
    compilation a fresh machine pays, whatever earlier runs left on disk."""
    folder = tempfile.mkdtemp(prefix="fgd-bench-cache-")
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def measure(device: torch.device, plan: Plan, impls, losses=LOSSES) -> dict:
    """Every case of ``losses`` and (with fgd) every sweep of ``impls``:
    {"results", "skipped", "sweeps", "copy_gbs"}."""
    copy_gbs = copy_bandwidth_gbs(device, plan.reps)
    print(f"copy bandwidth: {copy_gbs:.1f} GB/s")
    entries, skipped = run_cases(impls, device, plan, print, losses)
    add_ratios(entries, copy_gbs)
    rows, sweep_skipped = run_sweeps(impls, device, plan, print) if "fgd" in losses else ([], [])
    return dict(results=entries, skipped=skipped + sweep_skipped, sweeps=rows,
                copy_gbs=copy_gbs)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("TRITON_INTERPRET=1 is set: unset it, the interpreter is never benchmarked")
    out_dir = Path(args.out)
    start = meta.git_state()
    refuse_dirty(start, out_dir, args.allow_dirty, "Not run:")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    plan = make_plan(args.quick, device)
    with fresh_compile_caches():
        impls = cases.available(device, requested_impls(args), report=print)
        losses = requested_losses(args)
        run = measure(device, plan, impls, losses)
    now = datetime.datetime.now()
    end = meta.git_state()
    code = meta.code_state(start, end, args.allow_dirty)
    info = meta.metadata(device, plan, run.pop("copy_gbs"), now, code,
                         meta.columns(run["results"] + run["sweeps"]))
    info["losses"] = list(losses)
    print(table(run["results"]))
    refuse_dirty(end, out_dir, args.allow_dirty, "Not written: during the run")
    write(dict(metadata=info, **run), out_dir, f"{device.type}-{now.strftime('%Y-%m-%d-%H%M%S')}")
    return 0


def requested_losses(args) -> tuple[str, ...]:
    """--losses, else every loss."""
    losses = tuple(args.losses.split(",")) if args.losses else LOSSES
    unknown = set(losses) - set(LOSSES)
    if unknown:
        sys.exit(f"--losses: unknown {sorted(unknown)}; choose from {','.join(LOSSES)}")
    return losses


def requested_impls(args) -> tuple[str, ...]:
    """--impls, else every implementation (--quick leaves torch.compile out unless named)."""
    if args.impls:
        return tuple(args.impls.split(","))
    if args.quick:
        print("skipping compile: --quick leaves it out (compiling each case and mode takes "
              "10-40 s here); name it with --impls to time it")
        return tuple(i for i in cases.IMPLEMENTATIONS if i != "compile")
    return cases.IMPLEMENTATIONS


def write(report: dict, out_dir: Path, stem: str) -> None:
    from plot import plot_report

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    plot_report(report, png_path)
    print(f"wrote {json_path} and {png_path}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions, smaller sweeps, no torch.compile, and on CPU the "
                        "biggest case only for the fused implementations (a CPU run < 2 min)")
    p.add_argument("--out", default=str(RESULTS), help="output folder (default bench/results)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=cases.default_device().type)
    p.add_argument("--impls", help=f"comma-separated subset of {','.join(cases.IMPLEMENTATIONS)}")
    p.add_argument("--losses", help=f"comma-separated subset of {','.join(LOSSES)} (the sweeps "
                                    "run with fgd)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="write to bench/results/ even when the working tree differs from its "
                        "commit (the JSON records git_dirty and allow_dirty)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
