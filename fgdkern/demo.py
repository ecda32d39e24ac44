"""A self-contained FGD demo: synthetic FPN features and boxes -> the loss and a picture.

    python -m fgdkern.demo [--out DIR] [--backend auto] [--seed 0]

Builds teacher features with a response on every object and a noisier
student, runs MultiLevelFGDLoss forward and backward on every level at once,
prints the four loss terms per level and writes DIR/fgd_masks.png: the boxes,
the fg and bg masks (docs/fgd.md, "Masks from boxes") and the teacher's
spatial attention A_S. The figure needs matplotlib (extra [bench]).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

import fgdkern
from fgdkern.losses.fgd import resolve_backend
from fgdkern.reference.fgd import attention

IMG = (256, 384)          # (h, w) of the padded batch
STRIDES = (8, 16, 32)
CHANNELS = 32


def synthetic_batch(N: int, seed: int):
    """Boxes per image and (teacher, student) feature pyramids that respond to them."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMG
    boxes = []
    for _ in range(N):
        k = int(torch.randint(2, 6, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = (0.08 + 0.3 * torch.rand(k, 2, generator=g)) * torch.tensor([w, h])
        boxes.append(torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1))
    feats_T, feats_S = [], []
    for s in STRIDES:
        H, W = h // s, w // s
        ys = (torch.arange(H) + 0.5) * s
        xs = (torch.arange(W) + 0.5) * s
        objectness = torch.zeros(N, 1, H, W)
        for n, b in enumerate(boxes):
            inside = ((ys[:, None, None] >= b[:, 1]) & (ys[:, None, None] <= b[:, 3])
                      & (xs[None, :, None] >= b[:, 0]) & (xs[None, :, None] <= b[:, 2]))
            objectness[n, 0] = inside.any(-1).float()
        pattern = torch.randn(N, CHANNELS, 1, 1, generator=g)
        T = 0.3 * torch.randn(N, CHANNELS, H, W, generator=g) + 2.0 * objectness * pattern
        feats_T.append(T)
        feats_S.append(0.7 * T + 0.5 * torch.randn(N, CHANNELS, H, W, generator=g))
    return boxes, feats_T, feats_S


def save_figure(path: str, boxes, masks, feats_T, temp: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = IMG
    fig, axes = plt.subplots(len(STRIDES), 3, figsize=(11, 2.6 * len(STRIDES)))
    for row, (s, (fg, bg), T) in enumerate(zip(STRIDES, masks, feats_T)):
        A_S, _ = attention(T[:1], temp)
        panels = [(fg[0], f"fg mask, stride {s}"), (bg[0], f"bg mask, stride {s}"),
                  (A_S[0], f"teacher A_S, stride {s}")]
        for ax, (img, title) in zip(axes[row], panels):
            ax.imshow(img.numpy(), extent=(0, w, h, 0), cmap="magma", interpolation="nearest")
            for x1, y1, x2, y2 in boxes[0].tolist():
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="cyan", lw=1))
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("FGD masks and teacher attention (image 0; boxes in cyan)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out", help="folder for fgd_masks.png")
    p.add_argument("--backend", default="auto", choices=fgdkern.losses.fgd.BACKENDS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("python -m fgdkern.demo draws its figure with matplotlib, which is not "
                         "installed: pip install 'fgdkern[bench]' (or pip install matplotlib)")

    torch.manual_seed(args.seed)
    N = 2
    boxes, feats_T, feats_S = synthetic_batch(N, args.seed)
    shapes = [IMG] * N
    loss_fn = fgdkern.MultiLevelFGDLoss.for_detector(
        "retinanet", CHANNELS, CHANNELS, num_levels=len(STRIDES), backend=args.backend)
    feats_S = [f.requires_grad_() for f in feats_S]
    impl = resolve_backend(args.backend, feats_S[0].device, feats_S[0].dtype)

    def step():
        per_level = loss_fn.terms(feats_S, feats_T, boxes, shapes)
        total = sum(m.weighted(t) for m, t in zip(loss_fn.levels, per_level))
        grads = torch.autograd.grad(total, feats_S)
        return per_level, total, grads

    step()  # the first call pays one-off set-up; time the second
    start = time.perf_counter()
    per_level, total, grads = step()
    elapsed = time.perf_counter() - start

    print(f"fgdkern {fgdkern.__version__}: FGD on {N} images {IMG[0]}x{IMG[1]}, "
          f"{len(STRIDES)} levels x {CHANNELS} channels, backend={args.backend} -> {impl}")
    print(f"{'level':>5} {'HxW':>7} {'fg_loss':>12} {'bg_loss':>12} {'mask_loss':>12} {'rela_loss':>12}")
    for k, (s, t) in enumerate(zip(feats_S, per_level)):
        hw = f"{s.shape[2]}x{s.shape[3]}"
        print(f"{k:>5} {hw:>7} " + " ".join(f"{float(v.detach()):12.5g}" for v in t))
    print(f"weighted total (retinanet preset) = {float(total.detach()):.6g}; forward+backward "
          f"{elapsed * 1e3:.1f} ms; |dL/dS| = "
          f"{float(sum(g.norm() ** 2 for g in grads)) ** 0.5:.4g}")

    os.makedirs(args.out, exist_ok=True)
    masks = fgdkern.rasterize_boxes(boxes, shapes, [tuple(f.shape[-2:]) for f in feats_T])
    path = os.path.join(args.out, "fgd_masks.png")
    save_figure(path, boxes, masks, feats_T, loss_fn.levels[0].temp)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
