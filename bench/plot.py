"""The PNG of a bench/report.py run: speedup, time and GB/s per implementation and
case, and the sweeps of forward+backward time over H*W, C and boxes per image.

    python bench/plot.py bench/results/<device>-<date>.json   (writes the .png beside it)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

COLORS = {"eager_loop": "#7f7f7f", "reference": "#1f77b4", "compile": "#9467bd",
          "cpp": "#d62728", "triton": "#2ca02c"}
BAR_PANELS = [("speedup_vs_eager_loop", "speedup vs eager loop (x)"),
              ("median_ms", "median time (ms)"), ("gb_per_s", "GB/s of the minimum bytes")]
# Shown as time added over its first point: what each further box costs is the point.
ADDED_SWEEP = "boxes per image"


def _names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["name"] for r in rows))


def short(v: float) -> str:
    """A bar label: whole numbers from 100 up, else three significant digits."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def log_axis(axis) -> None:
    """Log scale with ticks at 1, 2, 5 x 10^k written as plain numbers."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def bar_panel(ax, entries: list[dict], key: str, title: str) -> None:
    """Grouped bars on a log axis: one group per (case, mode), one bar per implementation."""
    groups = list(dict.fromkeys((e["case"], e["mode"]) for e in entries))
    names = _names(entries)
    width = 0.8 / len(names)
    values = {(e["case"], e["mode"], e["name"]): e.get(key) for e in entries}
    for k, name in enumerate(names):
        xs = [g + (k - (len(names) - 1) / 2) * width for g in range(len(groups))]
        ys = [values.get((*group, name)) for group in groups]
        shown = [(x, y) for x, y in zip(xs, ys) if y]
        if shown:
            ax.bar(*zip(*shown), width, label=name, color=COLORS.get(name))
            for x, y in shown:
                ax.annotate(short(y), (x, y), ha="center", va="bottom", fontsize=7, rotation=90,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), [f"{c}\n{m}" for c, m in groups], fontsize=8)
    ax.set_title(title)
    ax.set_yscale("log")
    log_axis(ax.yaxis)
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 5)  # room for the value labels and the legend
    ax.grid(axis="y", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if handles:  # a run of one implementation may have no labelled bars
        ax.legend(fontsize=8, loc="upper left", ncol=min(len(handles), 3))


def sweep_panel(ax, rows: list[dict], sweep: str, axis_label: str, added: bool) -> None:
    """Median forward+backward time against the swept quantity, one line per implementation.
    ``added``: linear axes, and the time added over each line's first point."""
    for name in _names(rows):
        xs, ys = zip(*sorted((r["x"], r["median_ms"]) for r in rows if r["name"] == name))
        ys = [y - ys[0] for y in ys] if added else ys
        ax.plot(xs, ys, "o-", label=name, color=COLORS.get(name))
    if added:
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(f"fwd+bwd median ms added over x = {min(r['x'] for r in rows)}")
    else:
        for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
            scale("log")
            log_axis(axis)
        ax.set_ylabel("fwd+bwd median ms")
    ax.set_xlabel(axis_label)
    ax.set_title(f"cost vs {sweep}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def headline(meta: dict) -> str:
    where = meta["device_name"]
    if meta["device"] == "cpu":
        threads = meta["cpu_threads"]
        where += f", {threads} thread{'s' if threads != 1 else ''}"
        if meta.get("cpu_isa"):   # runs recorded before the variants were selectable lack it
            where += f", {meta['cpu_isa']} kernels"
    quick = " (--quick)" if meta["quick"] else ""
    losses = ", ".join(meta.get("losses", ["fgd"])).upper()
    return (f"{losses} on {meta['device'].upper()}: {where} - torch {meta['torch']} - "
            f"{meta['date']}{quick}")


def plot_report(report: dict, path: Path) -> None:
    meta, entries, sweeps = report["metadata"], report["results"], report["sweeps"]
    rows = 2 if sweeps else 1   # the sweeps run with FGD only (report.py --losses)
    fig, axes = plt.subplots(rows, 3, figsize=(18, 5 * rows), squeeze=False)
    copy_gbs = meta["copy_bandwidth_gbs"]
    axes[0, 0].axhline(1, color="k", lw=0.8)
    axes[0, 2].axhline(copy_gbs, color="k", ls="--", lw=1, label=f"copy {copy_gbs:.1f} GB/s")
    for ax, (key, title) in zip(axes[0], BAR_PANELS):
        shown = [e for e in entries if key != "speedup_vs_eager_loop" or e["name"] != "eager_loop"]
        bar_panel(ax, shown, key, title)
    for ax, (sweep, label) in zip(axes[1] if sweeps else [], meta["sweep_axes"].items()):
        sweep_panel(ax, [r for r in sweeps if r["sweep"] == sweep], sweep, label,
                    added=sweep == ADDED_SWEEP)
    fig.suptitle(headline(meta))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    plot_report(json.loads(source.read_text()), source.with_suffix(".png"))
