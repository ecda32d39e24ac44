"""The report of a run: ``<out>/report.json`` and ``<out>/report.png`` (rank 0 only).

report.json: per role the COCO metrics (mAP = AP@[.5:.95], AP50, AP75, AP_S/M/L
in 0..1), steps, step and wall times, the model; the distillation loss(es)
(``--distill``); plus the settings, versions and device. report.png: the loss
curves of the roles (task loss; the distillation terms of the distilled
student), the metric table, and for a few validation images the
fg/bg masks and the spatial attention of the teacher, the student and the
distilled student on one FPN level (the FGD paper's Figure 1 on this data).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import sys
from dataclasses import asdict

import torch

import fgdkern
from fgdkern.reference.fgd import attention
from fgdkern.train import logs, require

METRICS = ("mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
COMPARABLE = ("student and distilled use the same seed, initial weights, data order and "
              "number of steps: their mAPs differ only by the distillation ({})")
COLORS = {"teacher": "tab:blue", "student": "tab:orange", "distilled": "tab:green"}


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def versions() -> dict:
    tv = require("torchvision")
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": tv.__version__, "fgdkern": fgdkern.__version__,
            "fgdkern_extension": fgdkern.HAS_EXT}


def report_dict(run, results: dict, wall: float) -> dict:
    """The content of report.json."""
    out = {role: dict(r) for role, r in results.items()}
    s, d = out.get("student"), out.get("distilled")
    if d:
        d["distillation"] = run.args.distill
    if s and d and s.get("step_time_s") and d.get("step_time_s"):
        out["distill_step_time_ratio"] = d["step_time_s"] / s["step_time_s"]
        if run.args.distill == "fgd":   # the key of reports made before --distill
            out["fgd_step_time_ratio"] = out["distill_step_time_ratio"]
    if s and d:
        out["comparable"] = COMPARABLE.format(run.args.distill)
    out["distillation"] = run.args.distill
    schedules = {role: asdict(sc) for role, sc in run.schedules.items()}
    out.update(settings=vars(run.args), schedules=schedules, data=run.data_meta,
               skipped_images={"train": len(run.train_set.skipped),
                               "val": len(run.val_set.skipped)},
               versions=versions(), device=device_name(run.ctx.device),
               world_size=run.ctx.world, wall_time_s=wall)
    return _json_safe(out)


def write_json(obj, path) -> None:
    """json.dump via a temp file + os.replace (never a half-written report)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write(run, results: dict, trained: dict, wall: float) -> list[pathlib.Path]:
    """Write report.json and report.png into run.out; returns their paths."""
    run.out.mkdir(parents=True, exist_ok=True)
    data = report_dict(run, results, wall)
    json_path, png_path = run.out / "report.json", run.out / "report.png"
    write_json(data, json_path)
    plot(run, data, trained, png_path)
    return [json_path, png_path]


# ------------------------------------------------------------------------------- the figure
def _smooth(y: list, k: int) -> list:
    """Running mean over the last k values (the curves are noisy step by step)."""
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= k:
            acc -= y[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _plot_curves(ax, records: list[dict], keys, labels, colors, title: str, log: bool) -> None:
    for key, label, color in zip(keys, labels, colors):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
        if not pts:
            continue
        x, y = zip(*pts)
        k = max(1, len(y) // 25)
        ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
        ax.plot(x, _smooth(list(y), k), color=color, lw=1.8, label=label)
    ax.set_xlabel("step")
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


# Labels of FGD's terms in the figure; other terms are shown by their log key.
TERM_LABELS = {"fgd/fg": "fgd/fg (alpha)", "fgd/bg": "fgd/bg (beta)",
               "fgd/mask": "fgd/mask (gamma)", "fgd/rela": "fgd/rela (lambda)"}
TERM_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:cyan", "tab:olive", "tab:pink",
               "tab:gray", "tab:blue", "tab:orange")


def distill_keys(records: list[dict]) -> list[str]:
    """The distillation terms of a log ("fgd/fg", "pfi/imitation", ...), in logged order."""
    return [k for k in (records[0] if records else {}) if "/" in k and not k.startswith("task/")]


def _plot_losses(axes, run, roles) -> None:
    """Task loss of every role; the distillation terms (weighted, summed over levels) of the
    distilled role."""
    ax_task, ax_fgd = axes
    for role in roles:
        records = logs.read_jsonl(run.out / role / "log.jsonl")
        _plot_curves(ax_task, records, ["loss_task"], [role], [COLORS[role]],
                     "detection (task) loss", log=False)
    ax_task.set_ylabel("loss (running mean; raw faint)")
    records = logs.read_jsonl(run.out / "distilled" / "log.jsonl") if "distilled" in roles else []
    terms = distill_keys(records)
    keys = ["loss_task", *terms]
    labels = ["task", *[TERM_LABELS.get(k, k) for k in terms]]
    colors = ["black", *[TERM_COLORS[i % len(TERM_COLORS)] for i in range(len(terms))]]
    _plot_curves(ax_fgd, records, keys, labels, colors,
                 f"distilled ({run.args.distill}): task loss and distillation terms", log=True)
    if not records:
        ax_fgd.text(0.5, 0.5, "no distilled role in this run", ha="center", va="center",
                    transform=ax_fgd.transAxes)


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _plot_table(ax, data: dict, roles) -> None:
    ax.axis("off")
    cols = list(METRICS) + ["steps", "s/step"]
    rows = [[_fmt(data[r].get(m)) for m in METRICS]
            + [str(data[r].get("steps", "")),
               f"{data[r]['step_time_s']:.3f}" if data[r].get("step_time_s") else "n/a"]
            for r in roles]
    names = [f"{r} ({data[r]['distillation']})" if "distillation" in data[r] else r
             for r in roles]
    table = ax.table(cellText=rows, rowLabels=names, colLabels=cols, loc="center",
                     cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.6)
    note = "COCO AP in % on the validation split"
    if "comparable" in data:
        note += f"\n{data['comparable']}"
    ax.set_title("results", pad=12)
    ax.text(0.5, 0.02, note, ha="center", va="bottom", fontsize=7, wrap=True,
            transform=ax.transAxes)


@torch.no_grad()
def _features(model, image, target, level: int):
    """The transformed batch of one image, its boxes there, and FPN level ``level``."""
    model.eval()
    device = next(model.parameters()).device
    t = {"boxes": target["boxes"].to(device), "labels": target["labels"].to(device)}
    images, targets = model.transform([image.to(device)], [t])
    feats = list(model.backbone(images.tensors).values())
    return images, targets[0]["boxes"].cpu(), feats[min(level, len(feats) - 1)].float().cpu()


def attention_rows(run, trained: dict, temp: float, level: int) -> list[dict]:
    """Per shown validation image: the image, its boxes, masks and each model's A_S."""
    n = min(run.args.report_images, len(run.val_set))
    rows = []
    for i in [round(k * (len(run.val_set) - 1) / max(n - 1, 1)) for k in range(n)]:
        image, target = run.val_set[i]
        row = {"image": image, "boxes": target["boxes"], "attention": {}}
        for role, model in trained.items():
            images, boxes, F = _features(model, image, target, level)
            row["attention"][role] = attention(F, temp)[0][0]
            if "masks" not in row:
                pad = images.tensors.shape[-2:]
                fg, bg = fgdkern.rasterize_boxes([boxes], [tuple(pad)], [tuple(F.shape[-2:])])[0]
                scale = images.image_sizes[0][0] / image.shape[-2]
                row["masks"] = (fg[0], bg[0])
                row["extent"] = (0, pad[1] / scale, pad[0] / scale, 0)
        rows.append(row)
    return rows


def _show_map(fig, ax, image, m, extent, title, label, vmax=None, cmap="inferno") -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    im = ax.imshow(m.numpy(), extent=extent, alpha=0.6, cmap=cmap, vmin=0, vmax=vmax,
                   interpolation="nearest")
    ax.set_xlim(0, image.shape[-1])
    ax.set_ylim(image.shape[-2], 0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).set_label(label, fontsize=7)


def _plot_row(fig, axes, row: dict, level_name: str) -> None:
    from matplotlib.patches import Rectangle
    img = row["image"]
    axes[0].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    for x0, y0, x1, y1 in row["boxes"].tolist():
        axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
    axes[0].set_title("validation image, boxes", fontsize=9)
    axes[0].axis("off")
    fg, bg = row["masks"]
    _show_map(fig, axes[1], img, fg, row["extent"], f"fg mask ({level_name})",
              "1 / box area (cells)", cmap="viridis")
    _show_map(fig, axes[2], img, bg, row["extent"], f"bg mask ({level_name})",
              "1 / background cells", cmap="viridis")
    vmax = max(float(a.max()) for a in row["attention"].values())
    for ax, (role, a) in zip(axes[3:], row["attention"].items()):
        _show_map(fig, ax, img, a, row["extent"], f"{role}: spatial attention",
                  "A_S = HW softmax(mean|F| / T)", vmax=vmax)
    for ax in axes[3 + len(row["attention"]):]:
        ax.axis("off")


def plot(run, data: dict, trained: dict, path) -> None:
    """Draw report.png (matplotlib, Agg)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    roles = [r for r in ("teacher", "student", "distilled") if r in data]
    fgd = (data.get("distilled") or {}).get("model", {}).get("fgd") or {}
    temp, level = fgd.get("temp", 0.5), run.args.attention_level
    rows = attention_rows(run, trained, temp, level) if run.args.report_images else []
    fig = plt.figure(figsize=(21, 4.6 + 3.4 * len(rows)))
    grid = fig.add_gridspec(1 + len(rows), 6, height_ratios=[1.35] + [1] * len(rows))
    _plot_losses([fig.add_subplot(grid[0, 0:2]), fig.add_subplot(grid[0, 2:4])], run, roles)
    _plot_table(fig.add_subplot(grid[0, 4:6]), data, roles)
    names = {"retinanet": ["P3", "P4", "P5", "P6", "P7"],
             "fasterrcnn": ["P2", "P3", "P4", "P5", "pool"]}[run.args.arch]
    for k, row in enumerate(rows):
        _plot_row(fig, [fig.add_subplot(grid[1 + k, j]) for j in range(6)], row,
                  names[min(level, 4)])
    backbones = ", ".join(f"{r} {data[r]['model']['backbone']}" for r in roles)
    how = f"; distillation: {run.args.distill}" if "distilled" in roles else ""
    fig.suptitle(f"fgdkern.train: {run.args.arch} ({backbones}){how}; {data['device']}",
                 fontsize=12)
    fig.tight_layout()
    tmp = pathlib.Path(path).with_name(f".{pathlib.Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)

