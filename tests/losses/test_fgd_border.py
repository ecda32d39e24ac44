"""border="wrap" against the eager port of the widely used code (docs/fgd.md, "Masks from
boxes", last paragraph): with boxes across the top and left borders that code paints a
Python slice from a negative start, and the loaded MultiLevelFGDLoss with border="wrap"
gives its loss, terms and every gradient on every backend; the default "clip" does not.

Tolerances: those of tests/losses/test_fgd_checkpoint.py (the same runner).
"""
import pytest
import torch

from tests import harness
from tests.harness import ALL_FUSED, backend_device
from tests.losses.test_fgd_checkpoint import IMG_SHAPES, make_ports, runner


def border_boxes():
    """Per image: boxes across the top, the left, the top-left corner, the whole image from
    -1, a box above the image, one left of it, one past the bottom right, and one inside."""
    out = []
    for h, w in IMG_SHAPES:
        out.append(torch.tensor([
            [w * 0.3, -h * 0.2, w * 0.6, h * 0.4],    # across the top
            [-w * 0.1, h * 0.5, w * 0.2, h * 0.9],    # across the left
            [-w * 0.4, -h * 0.4, w * 0.9, h * 0.3],   # the top-left corner, wide
            [-1.0, -1.0, float(w), float(h)],         # the whole image, from -1
            [w * 0.2, -h * 0.5, w * 0.4, -h * 0.1],   # wholly above
            [-w * 0.5, h * 0.2, -w * 0.2, h * 0.6],   # wholly left
            [w * 0.7, h * 0.8, w * 1.3, h * 1.2],     # past the bottom right
            [w * 0.4, h * 0.4, w * 0.55, h * 0.6],    # inside
        ]))
    return out


@pytest.mark.parametrize("backend", ["reference"] + ALL_FUSED)
@pytest.mark.parametrize("Cs,Ct", [(6, 6), (5, 8)], ids=["same-channels", "align"])
def test_wrap_reproduces_the_port_across_borders(backend, Cs, Ct):
    run = runner(make_ports(Cs, Ct), Cs, Ct, backend_device(backend), boxes=border_boxes(),
                 border="wrap")
    harness.assert_matches_reference(run, f"fgdkern:{backend}")


def test_clip_differs_from_the_port_across_borders():
    """The default paints the visible part of such boxes: another loss on these boxes."""
    run = runner(make_ports(6, 6), 6, 6, "cpu", boxes=border_boxes())
    port, clipped = run("reference", False)[1], run("fgdkern:reference", False)[1]
    assert (clipped - port).abs() > 1e-3 * port.abs()


def test_bad_border():
    from fgdkern import FGDLoss, MultiLevelFGDLoss
    for bad in ("Wrap", None, "legacy"):
        with pytest.raises(ValueError, match="border must be one of"):
            FGDLoss(4, 4, border=bad)
        with pytest.raises(ValueError, match="border must be one of"):
            MultiLevelFGDLoss(2, 4, 4, border=bad)
