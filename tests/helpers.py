"""Inputs shared by the FGD tests: features, boxes of every awkward kind, modules, and the
inputs and coefficient tables of the two fused passes."""
import torch

from fgdkern import FGDLoss
from fgdkern.rows import FGD_CHAN_COEF, FGD_PIX_COEF

# Feature values of every kind the kernels must handle. Only "randn" has no exact zero:
# "relu" (about half zeros), "zero_channels" (whole channels 0), "zero_pixels" (all
# channels 0 at some pixels), "zero_image" (one image of the batch all 0, student and
# teacher in turn), "denormal" (subnormal values of the dtype, of both signs, scattered in).
KINDS = ["randn", "relu", "zero_channels", "zero_pixels", "zero_image", "denormal"]
ZERO_KINDS = KINDS[1:]


def apply_kind(x: torch.Tensor, kind: str, role: int = 0, seed: int = 0) -> torch.Tensor:
    """Writes the zeros (or subnormals) of ``kind`` into x (N, C, H, W), in place, so that
    any memory layout and view survives. ``role`` (0 student, 1 teacher) moves the zeros,
    so that S and T have zeros both at the same and at different places."""
    if kind == "randn":
        return x
    N, C, H, W = x.shape
    g = torch.Generator().manual_seed(1000 + 7 * seed + role)
    keep = torch.ones(N, C, H, W, dtype=torch.bool)
    if kind == "relu":
        x.clamp_(min=0)
    elif kind == "zero_channels":  # channels 0, 3, 6, ... of S and 0, 2, 4, ... of T
        keep[:, ::3 if role == 0 else 2] = False
    elif kind == "zero_pixels":
        both = torch.rand(N, 1, H, W, generator=g) < 0.2
        own = torch.rand(N, 1, H, W, generator=g) < 0.2
        keep &= ~(both | own) if role == 0 else ~both
        keep[:, :, 0, 0] = False  # at least one pixel of every image
    elif kind == "zero_image":  # S: images 0, 2, 3, 5, ...; T: 1, 2, 4, 5, ...: some both
        for n in range(N):
            if (n % 3 != 1) if role == 0 else (n % 3 != 0 or N == 1):
                keep[n] = False
    elif kind == "denormal":
        tiny = torch.finfo(x.dtype).tiny / 64  # float32 / bfloat16: 1.8e-40, float16: 9.5e-7
        where = torch.rand(N, C, H, W, generator=g) < 0.3
        sign = torch.where(torch.rand(N, C, H, W, generator=g) < 0.5, -1.0, 1.0)
        x.copy_(torch.where(where.to(x.device), (sign * tiny).to(x.device, x.dtype), x))
        assert (x[where.to(x.device)].abs().float() < torch.finfo(x.dtype).tiny).all()
        return x
    else:
        raise ValueError(f"unknown kind {kind!r}")
    x.mul_(keep.to(x.device))
    return x


def flush_denormals(x: torch.Tensor) -> torch.Tensor:
    """x with every float32 subnormal set to zero (what the C++ kernels read them as)."""
    return torch.where(x.float().abs() < torch.finfo(torch.float32).tiny, 0, x).to(x.dtype)


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


def random_features(N, Cs, Ct, sizes, dtype=torch.float32, seed=0, kind="randn"):
    """Student and teacher features per level; ``kind`` as in apply_kind."""
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, Cs, H, W, generator=g).to(dtype) for H, W in sizes]
    T = [(torch.randn(N, Ct, H, W, generator=g) * 1.5 + 0.3).to(dtype) for H, W in sizes]
    S = [apply_kind(s, kind, 0, seed + k) for k, s in enumerate(S)]
    T = [apply_kind(t, kind, 1, seed + k) for k, t in enumerate(T)]
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


def make_inputs(N, C, sizes, dtype=torch.float32, device="cpu", layout="contiguous", seed=0,
                kind="randn"):
    """Inputs of fgd_stats per level (temperatures not included); ``kind`` as in apply_kind."""
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
        S.append(apply_kind(s, kind, 0, seed + len(S)).to(device))
        T.append(apply_kind(t, kind, 1, seed + len(T)).to(device))
        fg.append(f.to(device))
        bg.append(((~cover).float() / nbg).to(device))
        w_s.append(torch.randn(C, generator=g).div(C ** 0.5).to(device))
        w_t.append(torch.randn(C, generator=g).div(C ** 0.5).to(device))
    return S, T, fg, bg, w_s, w_t


def make_coefs(S, seed=1):
    """Random fgd_grad coefficient tables, one row per name of FGD_PIX_COEF / FGD_CHAN_COEF
    (p_s and p_t softmaxes over pixels, as in the loss)."""
    g = torch.Generator().manual_seed(seed)
    pix, chan, K = [], [], []
    for s in S:
        N, C, H, W = s.shape
        p = torch.rand(N, len(FGD_PIX_COEF), H * W, generator=g)
        p[:, [FGD_PIX_COEF.p_s, FGD_PIX_COEF.p_t]] = torch.softmax(
            torch.randn(N, 2, H * W, generator=g), -1)
        pix.append(p.to(s.device))
        chan.append(torch.randn(N, len(FGD_CHAN_COEF), C, generator=g).to(s.device))
        K.append(torch.randn(N, 2, generator=g).to(s.device))
    return pix, chan, K


def channel_backends(op: str, kernels: tuple[str, ...]) -> list:
    """harness.all_fused(op), with "triton" also skipped while fgdkern.triton does not
    export ``kernels`` (the passes of ``op``)."""
    import importlib

    import pytest

    from tests import harness

    def exported() -> bool:
        try:
            module = importlib.import_module("fgdkern.triton")
        except ImportError:
            return False
        return all(hasattr(module, k) for k in kernels)

    params = []
    for p in harness.all_fused(op):
        if p.values == ("triton",) and not exported():
            p = pytest.param("triton", marks=[*p.marks, pytest.mark.skip(
                reason=f"fgdkern.triton has no {', '.join(kernels)}")])
        params.append(p)
    return params
