"""What a bench/report.py run records about itself: code, software, machine, settings."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

import cases
import fgdkern

REPO = Path(__file__).resolve().parent.parent
DIRTY_FILES_SHOWN = 40


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


def git_state() -> dict:
    """The commit, whether the working tree equals it (no modified, staged or untracked
    files), and the first changed paths when it does not."""
    status = _git("status", "--porcelain")
    changed = [line for line in (status or "").splitlines() if line.strip()]
    return dict(commit=_git("rev-parse", "HEAD"), clean=status is not None and not changed,
                changed=changed[:DIRTY_FILES_SHOWN], changed_count=len(changed))


def describe_dirty(state: dict) -> str:
    if state["commit"] is None:
        return "not a git checkout (or git is missing)"
    shown = ", ".join(line[3:] for line in state["changed"][:5])
    more = state["changed_count"] - min(5, state["changed_count"])
    return f"{state['changed_count']} changed paths: {shown}" + (f" and {more} more" if more else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _nvidia_driver(device: torch.device) -> str | None:
    """The NVIDIA kernel driver version (nvidia-smi), None where it cannot be read."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                              "-i", str(index)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def software() -> dict:
    return dict(torch=torch.__version__, triton=_version("triton"), fgdkern=_version("fgdkern"),
                numpy=_version("numpy"), python=platform.python_version(),
                cuda_runtime=torch.version.cuda)


def machine(device: torch.device) -> dict:
    """The device, its name and driver, the CPU, the ISA variant of the C++ kernels that ran
    (docs/cpu.md, "CPU variants") and the threads torch uses."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return dict(device=device.type, device_name=gpu or _cpu_model(), gpu_name=gpu,
                nvidia_driver=_nvidia_driver(device) if gpu else None,
                cpu_model=_cpu_model(), cpu_count=os.cpu_count(), cpu_isa=fgdkern.cpu_isa(),
                cpu_threads=torch.get_num_threads(),
                cpu_interop_threads=torch.get_num_interop_threads(),
                omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                platform=platform.platform())


def code_state(start: dict, end: dict, allow_dirty: bool) -> dict:
    """The commit and whether the tree was clean for the whole run (checked at its start
    and at its end); ``allow_dirty`` records that --allow-dirty was given."""
    clean = start["clean"] and end["clean"] and start["commit"] == end["commit"]
    return dict(git_commit=start["commit"], git_clean=clean, git_dirty=not clean,
                git_changed=sorted(set(start["changed"]) | set(end["changed"])),
                git_commit_at_end=end["commit"], allow_dirty=allow_dirty)


TOLERANCE = ("loss: rtol 1e-5, atol 1e-7; gradients: rtol 1e-5 per element, "
             "atol 1e-6 x the largest magnitude of that gradient (bench/checks.py)")


def columns(rows: list[dict]) -> dict:
    """impl -> what ran for it (the first entry of each implementation)."""
    out = {}
    for r in rows:
        out.setdefault(r["name"], r["implementation"])
    return out


def metadata(device: torch.device, plan, copy_gbs: float, now: datetime.datetime,
             code: dict, ran: dict) -> dict:
    """The run's metadata: machine, software, date, code state, plan (report.Plan), copy
    bandwidth, what is checked and how compiled, what each column ran, the cases."""
    return dict(
        **machine(device), **software(), date=now.isoformat(timespec="seconds"),
        **code, quick=plan.quick, warmup=plan.warmup, reps=plan.reps,
        sweep_reps=plan.sweep_reps, feature_dtype="float32", copy_bandwidth_gbs=copy_gbs,
        check_finite=cases.CHECK_FINITE, checked_against_reference=TOLERANCE,
        compile_caches="empty: a temporary inductor and Triton cache folder per run",
        implementations=ran,
        cases={c.name: c.describe() for c in cases.CASES.values()},
        sweep_axes={name: sweep.axis for name, sweep in cases.sweeps(plan.quick).items()})
