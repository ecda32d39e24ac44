"""The imitation gradient kernel (fgdkern/triton/imitation_grad.py) against the PyTorch
contract, fgdkern.reference.imitation_passes.imitation_grad: levels of different sizes in
one launch split into runs, C not a multiple of any tile, 1x1 maps, dtypes and layouts (dX
in those of X), Y = X, sign(0) = 0, zeros and subnormals, determinism, the custom op's
schema and fake, the launcher's argument checks; and both Triton passes through the
autograd op fgdkern.ops.imitation.imitation_stats against its "torch" form, by the
harness's exactness rule (tests/harness.py, assert_exact)."""
import pytest
import torch

from fgdkern.ops import imitation
from fgdkern.rows import IMIT_CHAN, IMIT_CHAN_COEF, IMIT_PIX, IMIT_PIX_COEF
from tests.harness import LAYOUTS, LOW_PRECISION, assert_exact
from tests.helpers import ZERO_KINDS
from tests.triton.common import DEVICE, needs_kernels
from tests.triton.imitation_common import check_grad, make_coefs, make_maps

pytestmark = needs_kernels

# several blocks per image (63 px), C = 37 (no BLOCK_C divides it), a 1x1 level
SIZES = [(9, 7), (4, 5), (1, 1)]


def imitation_grad(*args, **kwargs):
    from fgdkern.triton import imitation_grad as kernel

    return kernel(*args, **kwargs)


@pytest.mark.parametrize("programs", [1, 5, 10_000])  # one run per image .. one block per run
def test_levels_in_one_launch(programs):
    X, Y, _ = make_maps(2, 37, SIZES)
    check_grad(X, Y, programs=programs)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(dtype, layout):
    """dX in X's dtype; a dense X's memory format is kept, a strided view's dX is dense."""
    X, Y, _ = make_maps(2, 19, [(5, 6), (3, 2)], dtype=dtype, layout=layout)
    for dx, x in zip(check_grad(X, Y), X):
        assert dx.dtype == x.dtype
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        assert dx.stride() == x.stride() if dense else dx.is_contiguous()


def test_channels_last_more_channels_than_a_tile():
    X, Y, _ = make_maps(1, 130, [(3, 2), (1, 1)], layout="channels_last")
    check_grad(X, Y, programs=3)


def test_layouts_and_dtypes_differ_across_levels():
    """channels_last, a strided view, an expanded (stride 0) Y and a bfloat16 level at once."""
    (x0, x1, x2), (y0, y1, y2), _ = make_maps(2, 6, [(5, 4), (3, 3), (2, 3)])
    x0, y0 = (t.contiguous(memory_format=torch.channels_last) for t in (x0, y0))
    x1 = torch.randn(2, 12, 3, 3, device=DEVICE)[:, 1::2]
    y2 = y2[:1].expand(2, -1, -1, -1)
    X16, Y16, _ = make_maps(2, 6, [(4, 4)], dtype=torch.bfloat16, seed=2)
    X, Y = [x0, x1, x2] + X16, [y0, y1, y2] + Y16
    pix, chan = make_coefs(X)
    got = imitation_grad(X, Y, pix, chan)
    check_grad(X[:3], Y[:3], (pix[:3], chan[:3]))
    check_grad(X16, Y16, (pix[3:], chan[3:]))
    assert [g.dtype for g in got] == [x.dtype for x in X]


def test_y_is_x():
    """Y passed as X itself: the a * w (X - Y) term is exactly 0, whatever a and w."""
    X, Y, _ = make_maps(2, 21, SIZES[:2], same=True)
    pix, chan = make_coefs(X)
    got = check_grad(X, Y, (pix, chan))
    for table, row in ((pix, IMIT_PIX_COEF.a), (chan, IMIT_CHAN_COEF.w)):
        for t in table:
            t[:, row] = 0
    assert all(torch.equal(a, b) for a, b in zip(got, imitation_grad(X, Y, pix, chan)))


def test_sign_of_zero_is_zero():
    """dX = sign(X) (s[ij] + s[c]) alone (every other coefficient 0), -0.0 included."""
    X = torch.tensor([0.0, -0.0, 3.0, -3.0]).reshape(1, 4, 1, 1).to(DEVICE)
    pix = torch.zeros(1, len(IMIT_PIX_COEF), 1, device=DEVICE)
    pix[0, IMIT_PIX_COEF.s] = 0.25
    chan = torch.zeros(1, len(IMIT_CHAN_COEF), 4, device=DEVICE)
    chan[0, IMIT_CHAN_COEF.s] = 1.0
    dX = imitation_grad([X], [torch.ones_like(X)], [pix], [chan])[0]
    assert dX.flatten().tolist() == [0.0, 0.0, 1.25, -1.25]


@pytest.mark.parametrize("kind", ZERO_KINDS)
def test_zeros_and_subnormals(kind):
    X, Y, _ = make_maps(3, 7, [(5, 6), (1, 3)], seed=3, kind=kind)
    check_grad(X, Y, programs=3, kind=kind)


@pytest.mark.parametrize("dtype,layout,kind", [
    (torch.float16, "channels_last", "relu"),
    (torch.bfloat16, "strided", "denormal"),
    (torch.float16, "strided", "zero_channels"),
])
def test_zeros_in_low_precision(dtype, layout, kind):
    X, Y, _ = make_maps(2, 9, [(4, 5), (3, 1)], dtype=dtype, layout=layout, seed=4, kind=kind)
    check_grad(X, Y, kind=kind)


def test_repeatable_bit_for_bit():
    X, Y, _ = make_maps(2, 20, [(6, 6), (2, 3)])
    coefs = make_coefs(X)
    for programs in (1, 5):
        first = imitation_grad(X, Y, *coefs, programs=programs)
        again = imitation_grad(X, Y, *coefs, programs=programs)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"),
                                          (torch.bfloat16, "channels_last")])
def test_detector_pyramid(dtype, layout):
    """A RetinaNet-sized pyramid: many runs per image, over every SM of the device."""
    sizes = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    X, Y, _ = make_maps(2, 256, sizes, dtype=dtype, layout=layout)
    check_grad(X, Y)


def test_opcheck():
    X, Y, _ = make_maps(2, 3, [(2, 3), (1, 1)])
    torch.library.opcheck(torch.ops.fgdkern.imitation_grad_triton.default,
                          (X, Y, *make_coefs(X)), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("case,error,match", [
    ("no levels", ValueError, "X and Y"),
    ("Y dtype", TypeError, r"Y\[0\]"),
    ("float64", TypeError, r"X\[0\]"),
    ("pix_coef levels", ValueError, "pix_coef has 2 levels, X has 1"),
    ("pix_coef rows", ValueError, r"pix_coef\[0\]"),
    ("pix_coef dtype", TypeError, r"pix_coef\[0\]"),
    ("chan_coef shape", ValueError, r"chan_coef\[0\]"),
])
def test_argument_checks(case, error, match):
    X, Y, _ = make_maps(2, 4, [(3, 3)])
    pix, chan = make_coefs(X)
    bad = {
        "no levels": ([], [], [], []),
        "Y dtype": (X, [Y[0].bfloat16()], pix, chan),
        "float64": ([X[0].double()], [Y[0].double()], pix, chan),
        "pix_coef levels": (X, Y, pix + pix, chan),
        "pix_coef rows": (X, Y, [pix[0][:, :2]], chan),
        "pix_coef dtype": (X, Y, [pix[0].double()], chan),
        "chan_coef shape": (X, Y, pix, [chan[0][:1]]),
    }[case]
    with pytest.raises(error, match=match):
        imitation_grad(*bad)


# ------------------------------------------------------------- through the autograd op
def run_op(impl, X, Y, w, float64):
    """Tables of imitation_stats(impl, ...) and the gradients of X and Y (Y None: X alone)
    of a loss that uses every row, abs_x through an attention softmax as FKD does."""
    cast = (lambda t: t.detach().double()) if float64 else (lambda t: t.detach())  # noqa: E731
    Xg = [cast(x).requires_grad_() for x in X]
    Yg = None if Y is None else [cast(y).requires_grad_() for y in Y]
    pix, chan = imitation.imitation_stats(impl, Xg, Yg, [cast(t) for t in w])
    g = torch.Generator().manual_seed(7)
    loss = 0
    for p, c in zip(pix, chan):
        attention = torch.softmax(p[:, IMIT_PIX.abs_x] / (c.shape[-1] * 0.5), -1)
        weights = [torch.randn(t.shape, generator=g).to(t) for t in (p, c)]
        loss = loss + (attention * p[:, IMIT_PIX.sq_d]).sum() * p.shape[-1]
        loss = loss + (weights[0] * p).sum() + (weights[1] * c).sum()
    grads = torch.autograd.grad(loss, Xg + (Yg or []))
    return pix, chan, grads


@pytest.mark.parametrize("dtype,layout,has_y", [
    (torch.float32, "contiguous", True),
    (torch.float32, "channels_last", False),
    (torch.float16, "strided", True),
    (torch.bfloat16, "channels_last", True),
])
def test_op_matches_torch_form(dtype, layout, has_y):
    """Every row of both tables and dX, dY of each level as exact as the "torch" form."""
    X, Y, w = make_maps(2, 19, [(5, 6), (3, 2), (1, 1)], dtype=dtype, layout=layout)
    Y = Y if has_y else None
    got, want = run_op("triton", X, Y, w, False), run_op("torch", X, Y, w, False)
    cache = {}

    def truth():
        if "x" not in cache:
            cache["x"] = run_op("torch", X, Y, w, True)
        return cache["x"]

    n = sum(x.numel() for x in X)
    for t, rows in ((0, IMIT_PIX), (1, IMIT_CHAN)):
        for k, (a, b) in enumerate(zip(got[t], want[t])):
            for name in rows:
                r = getattr(rows, name)
                assert_exact(f"{name} of table {t}, level {k}", a[:, r], b[:, r],
                             lambda t=t, k=k, r=r: truth()[t][k][:, r], n)
    names = [f"X[{k}]" for k in range(len(X))] + [f"Y[{k}]" for k in range(len(X) * has_y)]
    assert len(got[2]) == len(names)
    for j, name in enumerate(names):
        assert got[2][j].dtype == dtype
        assert_exact(f"gradient of {name}", got[2][j], want[2][j], lambda j=j: truth()[2][j],
                     n, dtype)


def test_op_deterministic():
    X, Y, w = make_maps(2, 19, [(5, 6), (1, 1)])
    first, again = run_op("triton", X, Y, w, False), run_op("triton", X, Y, w, False)
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
