"""Property-based fuzzing of every fused FGD backend against the reference and float64.

hypothesis draws whole cases: 1-3 images, student and teacher channel counts
(unequal ones go through the align conv), 1-3 levels of 1x1 to 12x16 pixels,
boxes (edges on cell boundaries, integer or fractional, outside the image,
zero-size, inverted, none), the dtype (float32, float16, bfloat16), the memory
layout, the magnitude (1e-3 to 1e3) and mean (0 or +-1e3) of the features,
the parameters, temperatures and loss weights. For each backend the loss,
every term and every gradient must pass the harness's rule (tests/harness.py,
``assert_exact``: error vs float64 at most twice the float32 reference's own,
plus the noise floor; docs/kernels.md, "How exactness is tested").

Profiles (HYPOTHESIS_PROFILE): "ci" (the default) runs a fixed, derandomized
set of examples per backend; "thorough" runs hundreds of random ones, e.g.
``HYPOTHESIS_PROFILE=thorough pytest tests/losses/test_fgd_fuzz.py``.
Cases once found failing are kept below as explicit examples.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fgdkern import MultiLevelFGDLoss
from tests import harness
from tests.harness import ALL_FUSED, backend_device, with_layout
from tests.helpers import apply_kind, randomize
from tests.losses.test_fgd import runner

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=400, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BOX_KINDS = ["cell", "integer", "fraction", "outside", "zero_size", "inverted"]


@st.composite
def boxes_of_image(draw, img, cells):
    """Up to 4 boxes (x1, y1, x2, y2) in image pixels of an image img = (h, w)."""
    h, w = img
    H, W = cells
    out = []
    for kind in draw(st.lists(st.sampled_from(BOX_KINDS), max_size=4)):
        if kind == "cell":  # edges on the cell boundaries of the first level
            i = sorted(draw(st.lists(st.integers(0, W), min_size=2, max_size=2)))
            j = sorted(draw(st.lists(st.integers(0, H), min_size=2, max_size=2)))
            box = [i[0] * w / W, j[0] * h / H, i[1] * w / W, j[1] * h / H]
        elif kind == "integer":
            x = sorted(draw(st.lists(st.integers(0, w), min_size=2, max_size=2)))
            y = sorted(draw(st.lists(st.integers(0, h), min_size=2, max_size=2)))
            box = [x[0], y[0], x[1], y[1]]
        else:
            x = sorted(draw(st.lists(st.floats(-0.3 * w, 1.3 * w), min_size=2, max_size=2)))
            y = sorted(draw(st.lists(st.floats(-0.3 * h, 1.3 * h), min_size=2, max_size=2)))
            box = [x[0], y[0], x[1], y[1]]
            if kind == "outside":
                box = [box[0] - 2 * w, box[1], box[2] - 2 * w, box[3]]
            elif kind == "zero_size":
                box[2] = box[0]
            elif kind == "inverted":
                box = [box[2], box[3], box[0], box[1]]
        out.append([float(v) for v in box])
    return out


@st.composite
def cases(draw, small=False):
    """A case as plain values (so that a failing one is printed and kept as an @example).
    small: fewer and smaller maps, for the Triton interpreter."""
    N = draw(st.integers(1, 2 if small else 3))
    dtype = draw(st.sampled_from(["float32", "float32", "float16", "bfloat16"]))
    Ct = draw(st.integers(2, 36 if small else 40))
    # the align conv is float32: low-precision maps only without it (as in training,
    # where autocast would run it)
    Cs = draw(st.one_of(st.just(Ct), st.integers(1, Ct + 4))) if dtype == "float32" else Ct
    hw = (st.tuples(st.integers(1, 8), st.integers(1, 9)) if small
          else st.tuples(st.integers(1, 12), st.integers(1, 16)))
    sizes = draw(st.lists(hw, min_size=1, max_size=2 if small else 3))
    img = (draw(st.integers(8, 128)), draw(st.integers(8, 128)))
    return dict(
        N=N, Cs=Cs, Ct=Ct, sizes=sizes, img=img,
        boxes=[draw(boxes_of_image(img, sizes[0])) for _ in range(N)],
        dtype=dtype,
        layout=draw(st.sampled_from(harness.LAYOUTS)),
        scale=draw(st.sampled_from([1e-3, 1e-2, 0.3, 1.0, 10.0, 1e3])),
        offset=draw(st.sampled_from([0.0, 0.0, 0.0, 1e3, -1e3])),
        kind=draw(st.sampled_from(["randn", "randn", "relu", "zero_pixels"])),
        temps=[draw(st.sampled_from([0.5, 0.5, 0.2, 1.0, 3.0])) for _ in sizes],
        weights=draw(st.sampled_from([None, (1.0, 1.0, 1.0, 1.0), (5e-6, 1e-3, 2.0, 0.1)])),
        seed=draw(st.integers(0, 2**16)),
    )


def build_case(case, device):
    """(module, S, T, boxes, img_shapes) of a case."""
    N, Cs, Ct, sizes, seed = case["N"], case["Cs"], case["Ct"], case["sizes"], case["seed"]
    dtype = DTYPES[case["dtype"]]
    ms = randomize(MultiLevelFGDLoss(len(sizes), Cs, Ct, backend="reference"), seed)
    for m, temp in zip(ms.levels, case["temps"]):
        m.temp = temp
        if case["weights"] is not None:
            m.alpha_fgd, m.beta_fgd, m.gamma_fgd, m.lambda_fgd = case["weights"]
    g = torch.Generator().manual_seed(seed)
    S, T = [], []
    for k, (H, W) in enumerate(sizes):
        for out, C, mean, spread, role in ((S, Cs, 0.0, 1.0, 0), (T, Ct, 0.3, 1.5, 1)):
            x = torch.randn(N, C, H, W, generator=g) * spread + mean
            x = (x * case["scale"] + case["offset"]).to(dtype)
            x = apply_kind(x, case["kind"], role, seed + k)
            out.append(with_layout(x, case["layout"]).to(device))
    boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in case["boxes"]]
    return ms.to(device), S, T, boxes, [tuple(case["img"])] * N


def check(backend, case):
    """The harness's rule, its floor widened by the attention softmaxes' conditioning
    (harness.conditioned_sum_length)."""
    ms, S, T, boxes, shapes = build_case(case, backend_device(backend))
    harness.assert_matches_reference(runner(ms, S, T, boxes, shapes), backend,
                                     DTYPES[case["dtype"]],
                                     sum_length=harness.conditioned_sum_length(S, T, case["temps"]))


REGRESSIONS = [
    dict(  # bg_loss 3x the reference's error: 3-pixel sums of gc near 1e3 (see check)
        N=2, Cs=2, Ct=2, sizes=[(1, 3)], img=(8, 8), boxes=[[], []], dtype="float32",
        layout="contiguous", scale=1e-3, offset=1e3, kind="randn", temps=[0.5], weights=None,
        seed=0),
]


def regressions(test):
    for case in REGRESSIONS:
        test = example(case=case)(test)
    return test


@pytest.mark.parametrize("backend", [p for p in ALL_FUSED if p.values[0] != "triton"])
@settings(PROFILE)
@given(case=cases())
@regressions
def test_fused_backends_as_exact_as_the_reference(backend, case):
    check(backend, case)


@pytest.mark.parametrize("backend", [p for p in ALL_FUSED if p.values[0] == "triton"])
@settings(PROFILE)
@given(case=cases(small=harness.INTERPRETED))
@regressions
def test_triton_as_exact_as_the_reference(backend, case):
    check(backend, case)

