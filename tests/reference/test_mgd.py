"""The PyTorch reference of MGD (paper eqs. (2)-(4)) by hand, against an explicit loop
implementation, and by float64 gradcheck."""
import pytest
import torch

from fgdkern.reference.mgd import MGDParams, mgd_reference

D = torch.float64


def one_by_one(w1, b1, w2, b2):
    """Parameters of a 1-channel generation block whose 3x3 kernels hold only a centre."""
    k = lambda c: torch.zeros(1, 1, 3, 3, dtype=D).index_put_(  # noqa: E731
        (torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(1)), torch.tensor(c, dtype=D))
    return MGDParams(None, None, k(w1), torch.tensor([b1], dtype=D), k(w2),
                     torch.tensor([b2], dtype=D))


def test_reference_by_hand():
    """Two images of one channel and one pixel; centre-only kernels w1 = 2, w2 = -1,
    biases b1 = 0.5, b2 = 1. Image 0 kept (M = 1): G = -relu(2 * 3 + 0.5) + 1 = -5.5,
    T = 0.5 -> 36. Image 1 dropped (M = 0): G = -relu(0.5) + 1 = 0.5, T = 2 -> 2.25.
    Loss = (36 + 2.25) / N = 19.125 (eq. 4 over the batch size)."""
    S = torch.tensor([3.0, 7.0], dtype=D).reshape(2, 1, 1, 1).requires_grad_()
    T = torch.tensor([0.5, 2.0], dtype=D).reshape(2, 1, 1, 1)
    mask = torch.tensor([1.0, 0.0], dtype=D).reshape(2, 1, 1, 1)
    terms = mgd_reference([S], [T], [mask], [one_by_one(2.0, 0.5, -1.0, 1.0)])
    assert terms.mgd_loss.item() == pytest.approx(19.125, rel=1e-12)
    (dS,) = torch.autograd.grad(terms.mgd_loss, [S])
    # image 0: 2 (G - T) / N * w2 * w1 = (-6) * (-1) * 2 = 12; image 1 is masked: 0
    assert dS.flatten().tolist() == pytest.approx([12.0, 0.0], abs=1e-12)


def loop_mgd(S, T, masks, params) -> float:
    """Eqs. (2)-(4) one scalar at a time: the convolutions as explicit sums."""
    total = 0.0
    for s, t, m, p in zip(S, T, masks, params):
        s, t, m = s.detach().double(), t.detach().double(), m.detach().double()
        N, _, H, W = s.shape
        if p.align_weight is not None:
            a = p.align_weight.detach().double()[:, :, 0, 0]
            s = torch.einsum("oc,nchw->nohw", a, s) + p.align_bias.detach().double()[:, None, None]
        x = s * m

        def conv(x, w, b):
            w, b = w.detach().double(), b.detach().double()
            out = torch.zeros(N, w.shape[0], H, W, dtype=D)
            for n in range(N):
                for o in range(w.shape[0]):
                    for i in range(H):
                        for j in range(W):
                            v = float(b[o])
                            for c in range(w.shape[1]):
                                for di in range(3):
                                    for dj in range(3):
                                        y, z = i + di - 1, j + dj - 1
                                        if 0 <= y < H and 0 <= z < W:
                                            v += float(w[o, c, di, dj]) * float(x[n, c, y, z])
                            out[n, o, i, j] = v
            return out
        G = conv(conv(x, p.weight1, p.bias1).clamp_min(0), p.weight2, p.bias2)
        total += float(((G - t) ** 2).sum()) / N
    return total


def random_case(N, Cs, Ct, sizes, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    S = [r(N, cs, h, w) for cs, (h, w) in zip(Cs, sizes)]
    T = [r(N, ct, h, w) for ct, (h, w) in zip(Ct, sizes)]
    masks = [(torch.rand(N, 1, h, w, generator=g) > 0.5).to(dtype) for h, w in sizes]
    params = [MGDParams(r(ct, cs, 1, 1) if cs != ct else None, r(ct) if cs != ct else None,
                        r(ct, ct, 3, 3) * 0.3, r(ct), r(ct, ct, 3, 3) * 0.3, r(ct))
              for cs, ct in zip(Cs, Ct)]
    return S, T, masks, params


@pytest.mark.parametrize("N,Cs,Ct,sizes", [(1, [2], [2], [(2, 3)]),
                                           (2, [3, 2], [2, 2], [(3, 3), (1, 2)])])
def test_reference_matches_loop_implementation(N, Cs, Ct, sizes):
    case = random_case(N, Cs, Ct, sizes, seed=N)
    got = float(mgd_reference(*case).mgd_loss)
    assert got == pytest.approx(loop_mgd(*case), rel=1e-10)


def test_reference_float32_accumulation_for_half_inputs():
    S, T, masks, params = random_case(2, [3], [2], [(3, 4)], seed=3)
    terms = mgd_reference([s.half() for s in S], [t.half() for t in T], masks, params)
    assert terms.mgd_loss.dtype == torch.float32
    want = loop_mgd([s.half() for s in S], [t.half() for t in T], masks, params)
    assert float(terms.mgd_loss) == pytest.approx(want, rel=1e-5)


def test_reference_gradcheck_and_no_gradient_into_the_teacher():
    S, T, masks, params = random_case(2, [3, 2], [2, 2], [(2, 3), (1, 2)], seed=7)
    leaves = [x.requires_grad_() for x in S] + [x.requires_grad_() for p in params for x in p
                                                 if x is not None]

    def f(*xs):
        it = iter(xs[len(S):])
        ps = [MGDParams(*(None if x is None else next(it) for x in p)) for p in params]
        return mgd_reference(list(xs[:len(S)]), T, masks, ps).mgd_loss

    assert torch.autograd.gradcheck(f, tuple(leaves))
    T = [t.requires_grad_() for t in T]
    loss = mgd_reference(S, T, masks, params).mgd_loss
    assert all(g is None for g in torch.autograd.grad(loss, T, allow_unused=True))
