"""Time every available FGD implementation side by side in one run; write JSON and a plot.

    python bench/report.py [--quick] [--out DIR] [--device cpu|cuda] [--impls a,b,...]
                           [--threads N]

For each case of bench/cases.py and each implementation that runs here:
median and spread of the forward (under torch.no_grad) and of forward+backward,
peak memory of one call, speedup over the eager loop, and achieved GB/s against
the minimum bytes, next to the copy bandwidth measured in the same run. Then
sweeps of the forward+backward time over H*W, C and boxes per image. Writes
<DIR>/<device>-<date>.json and .png (bench/README.md explains every field).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import cases

REPO = Path(__file__).resolve().parent.parent
MB = 2 ** 20
# Bytes of the copy-bandwidth buffer (well above the last-level cache) and of the
# buffer written between CUDA timings to evict the features from L2.
COPY_BYTES = {"cpu": 256 * MB, "cuda": 1024 * MB}
L2_FLUSH_BYTES = 256 * MB


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


# ------------------------------------------------------------------------ timing
def _elapsed_cpu(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


class _CudaTimer:
    """CUDA-event time of one call, after evicting L2 (so features come from memory)."""

    def __init__(self, device: torch.device):
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, call) -> float:
        self.flush.zero_()
        self.start.record()
        call()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)


def make_timer(device: torch.device):
    """A function: call -> milliseconds of that one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return _CudaTimer(device)
    return _elapsed_cpu


def interleaved_ms(calls: dict, device: torch.device, reps: int) -> dict[object, list[float]]:
    """Milliseconds of ``reps`` calls of each of ``calls`` (warmed up already), taken in
    turns - one call of each, then the next round - so that a change in the machine's
    load over the run touches every implementation alike."""
    timer = make_timer(device)
    times = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            times[key].append(timer(call))
    return times


def summary(times: list[float]) -> dict:
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return dict(median_ms=float(median), spread=dict(
        q25_ms=float(q25), q75_ms=float(q75), min_ms=min(times), max_ms=max(times)),
        reps=len(times))


# ------------------------------------------------------------------------ memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _cpu_peak_mb(call) -> float | None:
    """Growth of the resident set during one call: VmHWM, reset to the current RSS first
    (Linux /proc/self/clear_refs), after returning freed heap to the OS. None elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except (OSError, AttributeError, KeyError):
        return None
    out = call()
    peak = _status_kb("VmHWM")
    del out
    return (peak - before) / 1024


def _cuda_peak_mb(call, device: torch.device) -> float:
    """Memory allocated at the peak of one call above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = call()
    torch.cuda.synchronize(device)
    del out
    return (torch.cuda.max_memory_allocated(device) - before) / MB


def peak_memory_mb(call, device: torch.device) -> float | None:
    return _cuda_peak_mb(call, device) if device.type == "cuda" else _cpu_peak_mb(call)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth_gbs(device: torch.device, plan: Plan) -> float:
    """dst.copy_(src) on a large float32 buffer: GB/s counting the read and the write."""
    src = torch.randn(COPY_BYTES[device.type] // 4, device=device)
    dst = torch.empty_like(src)
    copy = warmed_up(lambda: dst.copy_(src), warmup=2)
    times = interleaved_ms({"copy": copy}, device, reps=max(plan.reps, 5))["copy"]
    return 2 * src.numel() * 4 / (np.median(times) * 1e-3) / 1e9


# ------------------------------------------------------------------------ cases
def left_out(impl: str, case: cases.Case, plan: Plan, device: torch.device) -> str | None:
    """Why --quick does not time ``impl`` at ``case``, or None."""
    if plan.quick and device.type == "cpu" and case.heavy and impl in cases.SLOW_ON_CPU:
        return "--quick leaves the biggest case out for the slow implementations on CPU"
    return None


def warmed_up(call, warmup: int):
    for _ in range(warmup):
        call()
    return call


def ready_calls(impls, case: cases.Case, modes, device: torch.device, plan: Plan, log):
    """({(impl, mode): warmed-up call}, skipped entries) of the implementations that run
    at ``case``; a failure (e.g. compilation, out of memory) skips that implementation."""
    calls, skipped = {}, []
    for impl in impls:
        reason = left_out(impl, case, plan, device)
        try:
            runner = None if reason else cases.make_runner(impl, case, device)
            for mode in modes if runner else ():
                calls[impl, mode] = warmed_up(runner.calls[mode], plan.warmup)
        except Exception as exc:  # recorded with its reason, the run goes on
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            calls = {k: c for k, c in calls.items() if k[0] != impl}
            release(device)
        if reason:
            skipped.append(dict(name=impl, case=case.name, reason=reason))
            log(f"  {impl}: skipped ({reason})")
    return calls, skipped


def measure_case(impls, case: cases.Case, device: torch.device, plan: Plan, log):
    """(entries, skipped) at one case: per implementation and mode the time, spread,
    peak memory of one call and minimum bytes."""
    log(f"{case.name}: {case.describe()}")
    calls, skipped = ready_calls(impls, case, cases.MODES, device, plan, log)
    times = interleaved_ms(calls, device, plan.reps)
    entries = []
    for (impl, mode), call in calls.items():
        entries.append(dict(name=impl, case=case.name, mode=mode, **summary(times[impl, mode]),
                            peak_mem_mb=peak_memory_mb(cases.synchronized(call, device), device),
                            bytes=cases.feature_bytes(case, mode)))
        log(f"  {impl:<10} {mode:<8} {entries[-1]['median_ms']:10.2f} ms")
    return entries, skipped


def run_cases(impls, device: torch.device, plan: Plan, log) -> tuple[list[dict], list[dict]]:
    """(entries, skipped) over every case."""
    entries, skipped = [], []
    for case in cases.CASES.values():
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


def run_sweeps(impls, device: torch.device, plan: Plan, log) -> list[dict]:
    """Forward+backward time over each sweep of cases.sweeps, all points of a sweep timed
    in turns (so a drift of the load does not bend the curves). compile is left out: it
    would compile every point anew."""
    impls = [i for i in impls if i != "compile"]
    rows = []
    for sweep, series in cases.sweeps(plan.quick).items():
        log(f"sweep over {sweep}")
        calls = {}
        for x, case in series.points:
            ready, _ = ready_calls(impls, case, ["fwd+bwd"], device, plan, log)
            calls.update({(x, case.name, impl): call for (impl, _), call in ready.items()})
        for (x, name, impl), times in interleaved_ms(calls, device, plan.sweep_reps).items():
            rows.append(dict(sweep=sweep, x=x, case=name, name=impl, mode="fwd+bwd",
                             **summary(times)))
            log(f"  {name:<14} {impl:<10} {rows[-1]['median_ms']:10.2f} ms")
        del calls
        release(device)
    return rows


# ------------------------------------------------------------------------ metadata
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def metadata(device: torch.device, plan: Plan, copy_gbs: float, now: datetime.datetime) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return dict(
        device=device.type, device_name=gpu or _cpu_model(), cpu_model=_cpu_model(),
        cpu_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), gpu_name=gpu,
        torch=torch.__version__, triton=_version("triton"), fgdkern=_version("fgdkern"),
        python=platform.python_version(), date=now.isoformat(timespec="seconds"),
        git_commit=_git("rev-parse", "HEAD"), git_dirty=bool(_git("status", "--porcelain")),
        quick=plan.quick, warmup=plan.warmup, reps=plan.reps, sweep_reps=plan.sweep_reps,
        feature_dtype="float32", copy_bandwidth_gbs=copy_gbs,
        cases={c.name: c.describe() for c in cases.CASES.values()},
        sweep_axes={name: sweep.axis for name, sweep in cases.sweeps(plan.quick).items()})


# ------------------------------------------------------------------------ output
COLUMNS = [("case", "{}", "case"), ("mode", "{}", "mode"), ("name", "{}", "impl"),
           ("median_ms", "{:.2f}", "median ms"), ("iqr", "{}", "IQR ms"),
           ("peak_mem_mb", "{:.0f}", "peak MB"), ("speedup_vs_eager_loop", "{:.2f}x", "vs eager"),
           ("gb_per_s", "{:.1f}", "GB/s"), ("fraction_of_copy_bw", "{:.0%}", "of copy")]


def _cell(entry: dict, key: str, fmt: str) -> str:
    if key == "iqr":
        s = entry["spread"]
        return f"{s['q25_ms']:.2f}-{s['q75_ms']:.2f}"
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("TRITON_INTERPRET=1 is set: unset it, the interpreter is never benchmarked")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    plan = make_plan(args.quick, device)
    impls = cases.available(device, requested_impls(args), report=print)
    copy_gbs = copy_bandwidth_gbs(device, plan)
    print(f"copy bandwidth: {copy_gbs:.1f} GB/s")
    entries, skipped = run_cases(impls, device, plan, print)
    add_ratios(entries, copy_gbs)
    rows = run_sweeps(impls, device, plan, print)
    now = datetime.datetime.now()
    report = dict(metadata=metadata(device, plan, copy_gbs, now), results=entries,
                  skipped=skipped, sweeps=rows)
    print(table(entries))
    write(report, Path(args.out), f"{device.type}-{now.strftime('%Y-%m-%d-%H%M%S')}")
    return 0


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
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="output folder")
    p.add_argument("--device", choices=["cpu", "cuda"], default=cases.default_device().type)
    p.add_argument("--impls", help=f"comma-separated subset of {','.join(cases.IMPLEMENTATIONS)}")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
