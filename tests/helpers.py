"""Inputs shared by the FGD tests: features, boxes of every awkward kind, modules, and the
inputs and coefficient tables of the two fused passes."""
import torch

from fgdkern import FGDLoss


def random_boxes(N, img_hw, max_boxes=6, seed=0, empty_images=(0,)):
    """Per image: overlapping, border-touching, partly and wholly outside, degenerate boxes.

    Images whose index is in ``empty_images`` get no box (when N > 1).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = img_hw
    out = []
    for n in range(N):
        if N > 1 and n in empty_images:
            out.append(torch.zeros(0, 4))
            continue
        k = int(torch.randint(1, max_boxes + 1, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) - torch.tensor([w * 0.1, h * 0.1])
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        boxes = torch.cat([xy, xy + wh], 1)
        special = torch.tensor([[0.0, 0.0, w, h / 3], [w * 0.5, h * 0.5, w * 0.5, h * 0.5],
                                [-w, -h, -1.0, -1.0]])
        out.append(torch.cat([boxes, special[: n % 4]], 0))
    return out


def random_features(N, Cs, Ct, sizes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, Cs, H, W, generator=g).to(dtype) for H, W in sizes]
    T = [(torch.randn(N, Ct, H, W, generator=g) * 1.5 + 0.3).to(dtype) for H, W in sizes]
    return S, T


def randomize(module: torch.nn.Module, seed=0):
    """Non-zero values everywhere (the zero-initialised last convs hide gradients)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def make_loss(Cs, Ct, seed=0, **kw):
    return randomize(FGDLoss(Cs, Ct, **kw), seed)


def make_inputs(N, C, sizes, dtype=torch.float32, device="cpu", layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    S, T, fg, bg, w_s, w_t = [], [], [], [], [], []
    for H, W in sizes:
        s = torch.randn(N, C, H, W, generator=g).to(dtype)
        t = (0.5 * s.float() + torch.randn(N, C, H, W, generator=g)).to(dtype)
        if layout == "channels_last":
            s, t = (x.contiguous(memory_format=torch.channels_last) for x in (s, t))
        elif layout == "strided":  # a non-contiguous view: every other channel of a bigger map
            s = torch.randn(N, 2 * C, H, W, generator=g).to(dtype)[:, ::2]
            t = torch.randn(N, 2 * C, H, W, generator=g).to(dtype)[:, 1::2]
        cover = torch.rand(N, H, W, generator=g) < 0.3
        f = torch.where(cover, torch.rand(N, H, W, generator=g), torch.zeros(()))
        nbg = (~cover).sum((1, 2), keepdim=True).clamp(min=1).float()
        S.append(s.to(device))
        T.append(t.to(device))
        fg.append(f.to(device))
        bg.append(((~cover).float() / nbg).to(device))
        w_s.append(torch.randn(C, generator=g).div(C ** 0.5).to(device))
        w_t.append(torch.randn(C, generator=g).div(C ** 0.5).to(device))
    return S, T, fg, bg, w_s, w_t


def make_coefs(S, seed=1):
    g = torch.Generator().manual_seed(seed)
    pix, chan, K = [], [], []
    for s in S:
        N, C, H, W = s.shape
        p = torch.rand(N, 5, H * W, generator=g)
        p[:, 3:] = torch.softmax(torch.randn(N, 2, H * W, generator=g), -1)
        pix.append(p.to(s.device))
        chan.append(torch.randn(N, 9, C, generator=g).to(s.device))
        K.append(torch.randn(N, 2, generator=g).to(s.device))
    return pix, chan, K
