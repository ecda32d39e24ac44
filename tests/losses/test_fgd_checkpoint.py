"""Checkpoints of the widely used FGD code (docs/fgd.md, "Checkpoints of the widely used code").

A state dict in that code's distiller layout is built from eager ports of its
loss (tests/ported/feature_loss.py), loaded into MultiLevelFGDLoss, and the
loss, its terms and every gradient are compared with the sum of the ported
per-level losses, on every backend available here.

Tolerance, float32: 1e-5 relative (the shared harness, tests/harness.py). Both
sides evaluate the same float32 formulas and differ only in the order of the
sums (the fused passes reduce in tiles, the port in PyTorch's order), a few
ulps (6e-8 each) times a small factor for these sizes, far below 1e-5. A
gradient that is a cancelling sum (the conv_mask biases are analytically zero:
the softmax over pixels ignores a shift) has no float32 digits to compare; the
harness then measures both against the port run in float64.

Boxes lie inside the images: for boxes across the top or left edge the port
wraps and fgdkern clips, by design (docs/fgd.md, "Boxes across the top or left
border").
"""
import pickle
import re

import pytest
import torch

import fgdkern
from fgdkern import FGDLoss, MultiLevelFGDLoss, export_fgd_checkpoint, load_fgd_checkpoint
from fgdkern.losses.fgd_checkpoint import FGDLoadResult
from tests import harness
from tests.harness import ALL_FUSED, backend_device
from tests.helpers import randomize
from tests.ported.feature_loss import FeatureLoss

SIZES = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]   # levels 0..4
IMG_SHAPES = [(64, 96), (48, 80), (56, 72)]         # (h, w) per image, unpadded
HYPER = dict(temp=0.8, alpha_fgd=1.6e-3, beta_fgd=8e-4, gamma_fgd=8e-4, lambda_fgd=8e-6)


def make_ports(Cs, Ct, levels=range(len(SIZES)), name="loss_fgd_fpn_{k}", seed=0):
    """{loss name: ported module} in the configs' order (4, 3, 2, 1, 0), random parameters."""
    return {name.replace("{k}", str(k)): randomize(FeatureLoss(Cs, Ct, **HYPER), seed + 10 * k)
            for k in sorted(levels, reverse=True)}


def distiller_state(ports, prefix="distill_losses."):
    """A flat state dict as the distiller saves it: loss keys among student and teacher keys."""
    g = torch.Generator().manual_seed(1)
    state = {"student.backbone.conv1.weight": torch.randn(4, 3, 3, 3, generator=g),
             "student.neck.fpn_convs.0.conv.bias": torch.randn(6, generator=g)}
    for name, port in ports.items():
        for param, value in port.state_dict().items():
            state[f"{prefix}{name}.{param}"] = value.clone()
    state["teacher.neck.fpn_convs.4.conv.weight"] = torch.randn(6, 6, 3, 3, generator=g)
    state["teacher.bbox_head.retina_cls.bias"] = torch.randn(9, generator=g)
    return state


def wrapped(state):
    return {"meta": {"epoch": 24, "iter": 175824, "config": "fgd_retina_r101_fpn_2x"},
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9}]}}


def new_loss(Cs, Ct, levels=len(SIZES), backend="reference", border="clip"):
    return MultiLevelFGDLoss(levels, Cs, Ct, backend=backend, border=border, **HYPER)


def inside_boxes(seed=0):
    """Boxes inside each image (touching the right and bottom edges too); image 1 has none."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, (h, w) in enumerate(IMG_SHAPES):
        if n == 1:
            out.append(torch.zeros(0, 4))
            continue
        xs = torch.rand(4, 2, generator=g) * w
        ys = torch.rand(4, 2, generator=g) * h
        boxes = torch.stack([xs.min(1).values, ys.min(1).values, xs.max(1).values,
                             ys.max(1).values], 1)
        edge = torch.tensor([[w / 2, h / 3, float(w), float(h)], [8.0, 16.0, 8.0, 16.0]])
        out.append(torch.cat([boxes, edge]))
    return out


def features(N, Cs, Ct, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, Cs, H, W, generator=g).to(device) for H, W in SIZES]
    T = [(torch.randn(N, Ct, H, W, generator=g) * 1.5 + 0.3).to(device) for H, W in SIZES]
    return S, T


def params_of(ports):
    """levels.<k>.<param> -> tensor, from the ported modules by the number in their names."""
    level = {name: re.search(r"(\d+)$", name)[1] for name in ports}
    return {f"levels.{level[name]}.{p}": v
            for name, port in ports.items() for p, v in port.state_dict().items()}


def assert_params_equal(ms, ports):
    want = params_of(ports)
    got = dict(ms.state_dict())
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


# --- loading: every form, then the numbers on every backend -------------------------------

@pytest.mark.parametrize("form", ["wrapped", "bare", "file"])
def test_loads_every_form_by_level_number(form, tmp_path):
    ports = make_ports(6, 6)
    checkpoint = wrapped(distiller_state(ports))
    if form == "bare":
        checkpoint = checkpoint["state_dict"]
    elif form == "file":
        torch.save(checkpoint, tmp_path / "epoch_24.pth")
        checkpoint = str(tmp_path / "epoch_24.pth")
    ms = new_loss(6, 6)
    assert load_fgd_checkpoint(ms, checkpoint) == FGDLoadResult([], [])
    assert_params_equal(ms, ports)


def runner(ports, Cs, Ct, device, boxes=None, border="clip"):
    """The harness's run(name, float64): "reference" is the port (the ground truth here),
    "fgdkern:<backend>" the loaded MultiLevelFGDLoss on that backend with ``border``."""
    S, T = features(len(IMG_SHAPES), Cs, Ct, device)
    boxes = inside_boxes() if boxes is None else boxes
    metas = [{"img_shape": (h, w, 3)} for h, w in IMG_SHAPES]
    levels = [ports[f"loss_fgd_fpn_{k}"].to(device) for k in range(len(SIZES))]

    def run_port(float64):
        dt = torch.float64 if float64 else torch.float32
        mods = [FeatureLoss(Cs, Ct, **HYPER).to(device, dt) for _ in levels]
        for m, port in zip(mods, levels):
            m.load_state_dict(port.state_dict())
        S_ = [s.detach().to(dt).clone().requires_grad_() for s in S]
        terms = [torch.stack(m.terms(s, t.to(dt), boxes, metas)) for m, s, t in zip(mods, S_, T)]
        weights = torch.tensor([HYPER[k] for k in ("alpha_fgd", "beta_fgd", "gamma_fgd",
                                                   "lambda_fgd")], dtype=dt, device=device)
        loss = sum((weights * t).sum() for t in terms)
        names = [f"levels.{k}.{p}" for k, m in enumerate(mods) for p, _ in m.named_parameters()]
        params = [p for m in mods for p in m.parameters()]
        return terms, loss, S_, names, params

    def run_loaded(backend):
        ms = new_loss(Cs, Ct, backend=backend, border=border).to(device)
        load_fgd_checkpoint(ms, wrapped(distiller_state(ports)))
        S_ = [s.detach().clone().requires_grad_() for s in S]
        terms = ms.terms(S_, T, boxes, IMG_SHAPES)
        loss = sum(m.weighted(t) for m, t in zip(ms.levels, terms))
        names, params = zip(*ms.named_parameters())
        return [torch.stack(list(t)) for t in terms], loss, S_, list(names), list(params)

    def run(name, float64):
        terms, loss, S_, names, params = (run_port(float64) if name == "reference"
                                          else run_loaded(name.split(":", 1)[1]))
        grads = torch.autograd.grad(loss, S_ + params, allow_unused=True)
        keys = [f"S[{k}]" for k in range(len(S_))] + names
        return terms, loss, dict(zip(keys, grads))
    return run


@pytest.mark.parametrize("backend", ["reference"] + ALL_FUSED)
@pytest.mark.parametrize("Cs,Ct", [(6, 6), (5, 8)], ids=["same-channels", "align"])
def test_loaded_matches_port(backend, Cs, Ct):
    """Loss, per-level terms, gradients of S and of every parameter: the loaded module on
    each backend equals the sum of the ported levels."""
    run = runner(make_ports(Cs, Ct), Cs, Ct, backend_device(backend))
    harness.assert_matches_reference(run, f"fgdkern:{backend}")


# --- export -----------------------------------------------------------------------------

@pytest.mark.parametrize("Cs,Ct", [(6, 6), (5, 8)])
def test_export_has_the_distiller_layout_and_round_trips(Cs, Ct):
    ms = randomize(new_loss(Cs, Ct), seed=3)
    exported = export_fgd_checkpoint(ms)
    layout = distiller_state(make_ports(Cs, Ct))
    assert set(exported) == {k for k in layout if k.startswith("distill_losses.")}
    for key, value in exported.items():
        assert value.device.type == "cpu" and not value.requires_grad, key
    back = new_loss(Cs, Ct)
    assert load_fgd_checkpoint(back, exported) == FGDLoadResult([], [])
    for (name, a), b in zip(ms.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_export_copies():
    ms = randomize(new_loss(6, 6), seed=3)
    exported = ms.fgd_state_dict()
    key = "distill_losses.loss_fgd_fpn_2.conv_mask_t.weight"
    exported[key].add_(1.0)
    assert not torch.equal(exported[key], ms.levels[2].conv_mask_t.weight)


def test_export_custom_names_load_back_with_the_same_template():
    ms = randomize(new_loss(6, 6), seed=4)
    exported = ms.fgd_state_dict(prefix="module.losses.", name="loss_fgd_p{k}")
    assert "module.losses.loss_fgd_p3.channel_add_conv_s.1.weight" in exported
    back = new_loss(6, 6)
    back.load_fgd_checkpoint(exported, name_pattern="loss_fgd_p{k}")
    assert all(torch.equal(a, b) for a, b in zip(ms.parameters(), back.parameters()))
    bare = new_loss(6, 6)
    bare.load_fgd_checkpoint(ms.fgd_state_dict(prefix=""))
    assert all(torch.equal(a, b) for a, b in zip(ms.parameters(), bare.parameters()))


@pytest.mark.cuda
def test_export_from_cuda_is_on_cpu():
    ms = randomize(new_loss(6, 6), seed=5).cuda()
    assert all(v.device.type == "cpu" for v in export_fgd_checkpoint(ms).values())
    back = new_loss(6, 6).cuda()
    back.load_fgd_checkpoint(export_fgd_checkpoint(ms))
    assert all(torch.equal(a, b) for a, b in zip(ms.parameters(), back.parameters()))


# --- strict errors and the non-strict result ----------------------------------------------

def test_missing_level_names_levels_found_and_expected():
    state = distiller_state(make_ports(6, 6, levels=range(4)))
    with pytest.raises(ValueError, match=r"levels 0\.\.3 \(4\), the loss has levels 0\.\.4 \(5\)"
                       r"(.|\n)*level 4: missing, all 16 parameters"):
        load_fgd_checkpoint(new_loss(6, 6), state)


def test_extra_level_is_unexpected():
    state = distiller_state(make_ports(6, 6, levels=range(6)))
    with pytest.raises(ValueError, match=r"levels 0\.\.5 \(6\)(.|\n)*level 5: unexpected "
                       r"distill_losses\.loss_fgd_fpn_5\.conv_mask_s\.weight"):
        load_fgd_checkpoint(new_loss(6, 6), {"state_dict": state})


def test_missing_and_unexpected_parameters_per_level():
    state = distiller_state(make_ports(5, 6))       # align in the checkpoint, not in the loss
    del state["distill_losses.loss_fgd_fpn_2.channel_add_conv_t.1.bias"]
    with pytest.raises(ValueError) as info:
        load_fgd_checkpoint(new_loss(6, 6), state)
    msg = str(info.value)
    assert "level 2: missing channel_add_conv_t.1.bias" in msg
    assert "level 0: unexpected distill_losses.loss_fgd_fpn_0.align.weight" in msg


@pytest.mark.parametrize("strict", [True, False])
def test_wrong_shape_names_key_and_both_shapes(strict):
    state = distiller_state(make_ports(8, 8))
    with pytest.raises(ValueError, match=re.escape(
            "'distill_losses.loss_fgd_fpn_4.conv_mask_s.weight' is (1, 8, 1, 1), "
            "'levels.4.conv_mask_s.weight' of the loss is (1, 6, 1, 1)")):
        load_fgd_checkpoint(new_loss(6, 6), state, strict=strict)


@pytest.mark.parametrize("strict", [True, False])
def test_no_matching_key_names_pattern_and_examples(strict):
    state = distiller_state(make_ports(6, 6, name="loss_fgd_p{k}"))
    with pytest.raises(ValueError, match=r"no checkpoint key matches name_pattern .*loss_fgd_fpn_"
                       r".*student\.backbone\.conv1\.weight"):
        load_fgd_checkpoint(new_loss(6, 6), state, strict=strict)


@pytest.mark.parametrize("name_pattern", [
    "loss_fgd_p{k}",
    r"distill_losses\.loss_fgd_p(\d+)\.(.+)",
    re.compile(r".*\.loss_fgd_p(?P<level>\d+)\.(?P<param>.+)"),
], ids=["template", "regex", "named-groups"])
def test_custom_name_pattern(name_pattern):
    ports = make_ports(5, 8, name="loss_fgd_p{k}")
    ms = new_loss(5, 8)
    ms.load_fgd_checkpoint(wrapped(distiller_state(ports)), name_pattern=name_pattern)
    assert_params_equal(ms, ports)


def test_non_strict_loads_what_matches_and_reports_the_rest():
    ports = make_ports(6, 6, levels=[0, 1, 2, 3, 5])
    ms = new_loss(6, 6)
    before = {k: v.clone() for k, v in ms.levels[4].state_dict().items()}
    result = load_fgd_checkpoint(ms, distiller_state(ports), strict=False)
    assert result.missing_keys == [f"levels.4.{p}" for p in before]
    assert result.unexpected_keys == [f"distill_losses.loss_fgd_fpn_5.{p}" for p in before]
    for k in range(4):
        for p, v in ms.levels[k].state_dict().items():
            assert torch.equal(v, ports[f"loss_fgd_fpn_{k}"].state_dict()[p]), (k, p)
    for p, v in ms.levels[4].state_dict().items():
        assert torch.equal(v, before[p]), p


# --- bad arguments, file safety ------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(checkpoint=42), TypeError, "checkpoint must be a path or a dict"),
    (dict(loss=FGDLoss(6, 6)), TypeError, "loss must be a fgdkern.MultiLevelFGDLoss"),
    (dict(strict="yes"), TypeError, "strict must be a bool"),
    (dict(name_pattern=3), TypeError, "name_pattern must be"),
    (dict(name_pattern=r"loss_fgd_fpn_(\d+)"), ValueError, "exactly two groups"),
    (dict(name_pattern=r"loss_fgd_fpn_(\d+\.(.+)"), ValueError, "not a valid regex"),
    (dict(name_pattern="fpn_{k}_{k}"), ValueError, "exactly once"),
    (dict(name_pattern=r"(?:.*\.)?loss_fgd_fpn_(\w+?)\.(.+)"), ValueError, "not a level number"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(loss=new_loss(6, 6), checkpoint=distiller_state(make_ports(6, 6)))
    # ignored by the default pattern, a non-number level for the last case
    args["checkpoint"]["distill_losses.loss_fgd_fpn_x.conv_mask_s.weight"] = torch.zeros(1)
    with pytest.raises(exc, match=re.escape(match)):
        load_fgd_checkpoint(**{**args, **kwargs})


def test_bad_checkpoint_values():
    state = distiller_state(make_ports(6, 6))
    ms = new_loss(6, 6)
    with pytest.raises(ValueError, match="loss_fgd_fpn_01.conv_mask_s.weight.*both map to"):
        load_fgd_checkpoint(ms, {**state, "distill_losses.loss_fgd_fpn_01.conv_mask_s.weight":
                                 torch.zeros(1, 6, 1, 1)})
    with pytest.raises(ValueError, match="holds a list, not a tensor"):
        load_fgd_checkpoint(ms, {**state, "distill_losses.loss_fgd_fpn_0.conv_mask_s.bias": [0]})


@pytest.mark.parametrize("name", ["loss_fgd_fpn", "{k}_{k}", 3])
def test_export_bad_name(name):
    with pytest.raises(ValueError, match="name must be a str containing"):
        export_fgd_checkpoint(new_loss(6, 6), name=name)


def test_export_bad_arguments():
    with pytest.raises(TypeError, match="loss must be"):
        export_fgd_checkpoint(FGDLoss(6, 6))
    with pytest.raises(TypeError, match="prefix must be a str"):
        export_fgd_checkpoint(new_loss(6, 6), prefix=None)


class _NotAllowed:
    pass


def test_file_is_read_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": distiller_state(make_ports(6, 6)), "meta": _NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_fgd_checkpoint(new_loss(6, 6), path)


def test_torch_without_weights_only_falls_back_with_a_warning(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    ports = make_ports(6, 6)
    torch.save(wrapped(distiller_state(ports)), path)
    real_load = torch.load

    def old_load(f, map_location=None):
        return real_load(f, map_location=map_location, weights_only=True)

    monkeypatch.setattr(torch, "load", old_load)
    ms = new_loss(6, 6)
    with pytest.warns(UserWarning, match="no weights_only option.*checkpoints you trust"):
        ms.load_fgd_checkpoint(path)
    assert_params_equal(ms, ports)


def test_package_exports():
    assert fgdkern.load_fgd_checkpoint is load_fgd_checkpoint
    assert fgdkern.export_fgd_checkpoint is export_fgd_checkpoint
