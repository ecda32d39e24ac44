"""The PyTorch reference of FKD by hand (from the paper's equations and docs/fkd.md),
against an explicit loop implementation, and by gradcheck in float64."""
import copy
import math

import numpy as np
import pytest
import torch

from fgdkern import FKDLoss
from fgdkern.losses.fkd import NonLocalBlock2d
from fgdkern.reference.fkd import safe_sqrt


def randomized(m, seed=0):
    """Every parameter non-zero (the zero-initialised BatchNorm hides the non-local layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return m


def identity_(conv):
    """A 1x1 conv or Linear of C -> C that is the identity."""
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.weight.shape[0]).reshape(conv.weight.shape))
        conv.bias.zero_()


def t(rows):
    """A (1, C, H, W) map from nested lists [C][H][W]."""
    return torch.tensor(rows, dtype=torch.float64)[None]


# --------------------------------------------------------------------- by hand
def code_loss(temp=0.5):
    m = FKDLoss(2, 2, temp=temp, backend="reference").double()
    identity_(m.adaptation)
    identity_(m.channel_adaptation)
    identity_(m.non_local_adaptation)
    with torch.no_grad():
        m.spatial_adaptation.weight.fill_(0.25)
        m.spatial_adaptation.bias.zero_()
    return m


def test_code_variant_by_hand_uniform_masks():
    """Every pixel has mean |F| 1 in S and T: M = 1, so L_feat = ||T - S||_2 (f identity);
    signed means: mean_ij S = (0, 0), mean_ij T = (1, 1); mean_c S = 0, mean_c T = 1;
    the zero-initialised BatchNorm makes each non-local block the identity."""
    S = t([[[1.0, -1.0]], [[-1.0, 1.0]]])
    T = t([[[2.0, 0.0]], [[0.0, 2.0]]])
    terms = code_loss().terms(S, T)
    assert float(terms.feat_loss) == pytest.approx(2.0, rel=1e-12)   # sqrt(1 + 1 + 1 + 1)
    assert float(terms.channel_loss) == pytest.approx(math.sqrt(2), rel=1e-12)
    assert float(terms.spatial_loss) == pytest.approx(math.sqrt(2), rel=1e-12)
    assert float(terms.nonlocal_loss) == pytest.approx(2.0, rel=1e-12)  # ||S - T||


def test_code_variant_by_hand_mask_averaged_after_the_softmax():
    """One channel, two pixels, temp 1: A_S(S) = 2 softmax(0, 1), A_S(T) = 2 softmax(0, 2),
    M = their mean; (T - S)^2 = (0, 1), so L_feat = sqrt(M[1])."""
    S, T = t([[[0.0, 1.0]]]), t([[[0.0, 2.0]]])
    m = FKDLoss(1, 1, temp=1.0, non_local=False, backend="reference").double()
    identity_(m.adaptation)
    e = math.e
    M1 = (2 * e / (1 + e) + 2 * e ** 2 / (1 + e ** 2)) / 2
    assert float(m.terms(S, T).feat_loss) == pytest.approx(math.sqrt(M1), rel=1e-12)


def test_paper_variant_by_hand_eq1_eq2():
    """G_s(S) = (1, 1), G_s(T) = (2, 2), G_c likewise: L_AT (eq. 1) = sqrt(2) + sqrt(2);
    both masks uniform (ones), so L_AM (eq. 2) = sqrt(sum (T - S)^2) = sqrt(8)."""
    S = t([[[1.0, 1.0]], [[1.0, 1.0]]])
    T = t([[[3.0, 1.0]], [[1.0, 3.0]]])
    m = FKDLoss(2, 2, variant="paper", non_local=False, backend="reference").double()
    terms = m.terms(S, T)
    assert float(terms.at_loss) == pytest.approx(2 * math.sqrt(2), rel=1e-12)
    assert float(terms.am_loss) == pytest.approx(math.sqrt(8), rel=1e-12)


def test_paper_variant_by_hand_masks_from_the_sum():
    """C = 1: G_s(S) = (0, 2), G_s(T) = (1, 2), so M_s = 2 softmax((1, 4) / temp) (the SUM
    before the softmax), M_c = 1; (T - S)^2 = (1, 0): L_AM = sqrt(M_s[0]);
    L_AT = ||(0, 2) - (1, 2)|| + |1 - 1.5| = 1.5."""
    S, T = t([[[0.0, 2.0]]]), t([[[1.0, 2.0]]])
    temp = 0.7
    m = FKDLoss(1, 1, variant="paper", temp=temp, non_local=False, backend="reference").double()
    terms = m.terms(S, T)
    M0 = 2 * math.exp(1 / temp) / (math.exp(1 / temp) + math.exp(4 / temp))
    assert float(terms.am_loss) == pytest.approx(math.sqrt(M0), rel=1e-12)
    assert float(terms.at_loss) == pytest.approx(1.5, rel=1e-12)


def test_weights_of_the_variants():
    """Code: beta * L_feat + alpha * (L_ch + L_sp) + gamma * L_NL; paper (section 3.3):
    alpha * L_AT + beta * L_AM + gamma * L_NLD."""
    S, T = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    for variant, weights in (("code", ("beta", "alpha", "alpha", "gamma")),
                             ("paper", ("alpha", "beta", "gamma"))):
        m = randomized(FKDLoss(3, 3, variant=variant, alpha=2.0, beta=3.0, gamma=5.0,
                               backend="reference"))
        m.eval()
        terms = m.terms(S, T)
        want = sum(getattr(m, w) * v for w, v in zip(weights, terms))
        torch.testing.assert_close(m(S, T), want, rtol=1e-6, atol=0)


def test_sqrt_at_zero_has_zero_gradient():
    """T = f(S) and equal means: every norm is 0 and every gradient 0, not NaN."""
    S = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    m = code_loss()
    with torch.no_grad():
        m.spatial_adaptation.weight.zero_()
        m.spatial_adaptation.weight[0, 0, 1, 1] = 1.0
    loss = m(S, S.detach())
    grads = torch.autograd.grad(loss, [S, *m.parameters()])
    assert float(loss) == 0.0
    assert all(torch.isfinite(g).all() and not g.any() for g in grads)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    safe_sqrt(x.square().sum()).backward()
    assert not x.grad.any()


# --------------------------------------------------------- an explicit loop
def _np(x):
    return x.detach().double().numpy()


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def loop_conv1x1(x, conv):
    """x (C, H, W) -> (C', H, W), one multiply-add at a time."""
    w, b = _np(conv.weight)[:, :, 0, 0], _np(conv.bias)
    C, H, W = x.shape
    out = np.zeros((w.shape[0], H, W))
    for o in range(w.shape[0]):
        for i in range(H):
            for j in range(W):
                out[o, i, j] = b[o] + sum(w[o, c] * x[c, i, j] for c in range(C))
    return out


def loop_pool(x):
    """Max pool 2x2 stride 2 (1 along an axis of size 1), floor, one window at a time."""
    C, H, W = x.shape
    kh, kw = (2 if H >= 2 else 1), (2 if W >= 2 else 1)
    out = np.zeros((C, H // kh, W // kw))
    for c in range(C):
        for a in range(H // kh):
            for b in range(W // kw):
                out[c, a, b] = max(x[c, a * kh + u, b * kw + v]
                                   for u in range(kh) for v in range(kw))
    return out


def loop_wy(X, block):
    """W(y) of the block on every image: f[p, q] = theta_p . phi_q / Np, y_p = sum_q f[p, q] g_q."""
    N, C, H, W = X.shape
    out = []
    for n in range(N):
        theta = loop_conv1x1(X[n], block.theta).reshape(-1, H * W)
        phi = loop_pool(loop_conv1x1(X[n], block.phi[0])).reshape(theta.shape[0], -1)
        g = loop_pool(loop_conv1x1(X[n], block.g[0])).reshape(theta.shape[0], -1)
        Np = phi.shape[1]
        y = np.zeros_like(theta)
        for p in range(H * W):
            for q in range(Np):
                f = sum(theta[i, p] * phi[i, q] for i in range(theta.shape[0])) / Np
                y[:, p] += f * g[:, q]
        out.append(loop_conv1x1(y.reshape(-1, H, W), block.W[0]))
    return np.stack(out)


def loop_non_local(X, block):
    """BatchNorm of W(y) over the batch (training) or with its running statistics, + x."""
    Wy = loop_wy(X, block)
    bn = block.W[1]
    if block.training:
        mean, var = Wy.mean((0, 2, 3)), Wy.var((0, 2, 3))
    else:
        mean, var = _np(bn.running_mean), _np(bn.running_var)
    scale = _np(bn.weight) / np.sqrt(var + bn.eps)
    return (Wy - mean[:, None, None]) * scale[:, None, None] + _np(bn.bias)[:, None, None] + X


def loop_attention(F):
    """mean_c |F| per pixel (N, H, W) and mean_ij |F| per channel (N, C)."""
    N, C, H, W = F.shape
    gs = np.array([[[sum(abs(F[n, c, i, j]) for c in range(C)) / C for j in range(W)]
                    for i in range(H)] for n in range(N)])
    gc = np.array([[sum(abs(F[n, c, i, j]) for i in range(H) for j in range(W)) / (H * W)
                    for c in range(C)] for n in range(N)])
    return gs, gc


def loop_mask(G, temp):
    """K * softmax(G / temp) over the last axes of each image."""
    return np.stack([G[n].size * _softmax(G[n].ravel() / temp).reshape(G[n].shape)
                     for n in range(G.shape[0])])


def loop_nonlocal_term(S, T, m):
    if not m.non_local:
        return 0.0
    rel_s = np.stack([loop_conv1x1(z, m.non_local_adaptation)
                      for z in loop_non_local(S, m.student_non_local)])
    rel_t = loop_non_local(T, m.teacher_non_local)
    return math.sqrt(((rel_s - rel_t) ** 2).sum())


def loop_code(S, T, m):
    N, Ct, H, W = T.shape
    fS = np.stack([loop_conv1x1(s, m.adaptation) for s in S])
    M = (loop_mask(loop_attention(T)[0], m.temp) + loop_mask(loop_attention(S)[0], m.temp)) / 2
    feat = math.sqrt(sum(M[n, i, j] * (T[n, c, i, j] - fS[n, c, i, j]) ** 2 for n in range(N)
                         for c in range(Ct) for i in range(H) for j in range(W)))
    Wl, bl = _np(m.channel_adaptation.weight), _np(m.channel_adaptation.bias)
    k, kb = _np(m.spatial_adaptation.weight)[0, 0], float(m.spatial_adaptation.bias)
    ch = sp = 0.0
    for n in range(N):
        ch += (((T[n].mean((1, 2)) - Wl @ S[n].mean((1, 2)) - bl)) ** 2).sum()
        ms, mt = S[n].mean(0), T[n].mean(0)
        for i in range(H):
            for j in range(W):
                conv = kb + sum(k[u + 1, v + 1] * ms[i + u, j + v] for u in (-1, 0, 1)
                                for v in (-1, 0, 1) if 0 <= i + u < H and 0 <= j + v < W)
                sp += (mt[i, j] - conv) ** 2
    return [feat, math.sqrt(ch), math.sqrt(sp), loop_nonlocal_term(S, T, m)]


def loop_paper(S, T, m):
    Sa = S if m.align is None else np.stack([loop_conv1x1(s, m.align) for s in S])
    N, C, H, W = T.shape
    (gs_s, gc_s), (gs_t, gc_t) = loop_attention(Sa), loop_attention(T)
    M_s, M_c = loop_mask(gs_s + gs_t, m.temp), loop_mask(gc_s + gc_t, m.temp)
    at = math.sqrt(((gs_s - gs_t) ** 2).sum()) + math.sqrt(((gc_s - gc_t) ** 2).sum())
    am = math.sqrt(sum((T[n, c, i, j] - Sa[n, c, i, j]) ** 2 * M_s[n, i, j] * M_c[n, c]
                       for n in range(N) for c in range(C) for i in range(H) for j in range(W)))
    return [at, am, loop_nonlocal_term(S, T, m)]


LOOP_CASES = [  # N, Cs, Ct, H, W, temp
    (1, 2, 2, 1, 1, 0.5),
    (2, 3, 3, 3, 5, 0.5),
    (2, 2, 4, 4, 3, 0.1),
    (3, 5, 2, 1, 4, 1.3),
]


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("N,Cs,Ct,H,W,temp", LOOP_CASES)
def test_reference_matches_loop(variant, training, N, Cs, Ct, H, W, temp):
    g = torch.Generator().manual_seed(N * 100 + H * 10 + W)
    S = torch.randn(N, Cs, H, W, generator=g, dtype=torch.float64)
    T = torch.randn(N, Ct, H, W, generator=g, dtype=torch.float64) * 1.5 + 0.2
    m = randomized(FKDLoss(Cs, Ct, variant=variant, temp=temp, backend="reference"), H + W)
    m = m.double().train(training)
    with torch.no_grad():
        for block in (m.student_non_local, m.teacher_non_local):
            block.W[1].running_mean.uniform_(-0.5, 0.5)
            block.W[1].running_var.uniform_(0.5, 2.0)
    loop = (loop_code if variant == "code" else loop_paper)(_np(S), _np(T), m)
    got = [float(x) for x in m.terms(S, T)]
    np.testing.assert_allclose(got, loop, rtol=1e-10, atol=1e-12)


def test_non_local_block_matches_loop_and_updates_running_stats():
    """Training mode: batch statistics, and the running ones updated as nn.BatchNorm2d
    updates them on the same W(y)."""
    X = torch.randn(3, 4, 5, 2, dtype=torch.float64)
    block = randomized(NonLocalBlock2d(4)).double()
    bn = copy.deepcopy(block.W[1])
    want = loop_non_local(_np(X), block)
    np.testing.assert_allclose(_np(block(X)), want, rtol=1e-10, atol=1e-12)
    bn(torch.from_numpy(loop_wy(_np(X), block)))
    torch.testing.assert_close(block.W[1].running_mean, bn.running_mean)
    torch.testing.assert_close(block.W[1].running_var, bn.running_var)
    assert int(block.W[1].num_batches_tracked) == int(bn.num_batches_tracked) == 1


def test_non_local_is_the_identity_at_initialisation():
    block = NonLocalBlock2d(6)
    X = torch.randn(2, 6, 4, 4)
    assert torch.equal(block(X), X)
    assert block.inter_channels == 3 and NonLocalBlock2d(1).inter_channels == 1


# ------------------------------------------------------------------ gradcheck
def _gradcheck(m, S, T, params, fast):
    names = list(params)

    def f(s, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (s, T))
    assert torch.autograd.gradcheck(f, (S, *params.values()), eps=1e-6, atol=1e-5, rtol=1e-3,
                                    fast_mode=fast)


def _gradcheck_case(variant, N, Cs, Ct, H, W):
    g = torch.Generator().manual_seed(Cs + Ct + H)
    S = torch.randn(N, Cs, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(N, Ct, H, W, generator=g, dtype=torch.float64)
    m = randomized(FKDLoss(Cs, Ct, variant=variant, temp=1e6, alpha=0.7, beta=1.3, gamma=0.9,
                           backend="reference"), Cs).double()
    return m, S, T


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("Cs,Ct", [(3, 3), (2, 4)])
def test_gradcheck(variant, Cs, Ct):
    """S and every parameter in float64, along random directions (gradcheck's fast mode).
    The masks are detached (docs/fkd.md): with a temperature of 1e6 they are constant to
    1e-6 over the inputs, so the numerical derivative (which sees them move) agrees; the
    parameters of the code variant (its masks do not depend on them) also at temp 0.5."""
    m, S, T = _gradcheck_case(variant, 2, Cs, Ct, 4, 3)
    _gradcheck(m, S, T, dict(m.named_parameters()), fast=True)
    if variant == "code":
        m.temp = 0.5
        _gradcheck(m, S.detach(), T, dict(m.named_parameters()), fast=True)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_gradcheck_every_element(variant):
    """Element by element: every entry of S, and of the align / adaptation layers."""
    m, S, T = _gradcheck_case(variant, 1, 2, 3, 2, 3)
    layers = ("align", "adaptation", "channel_adaptation", "non_local_adaptation")
    _gradcheck(m, S, T, {n: p for n, p in m.named_parameters() if n.split(".")[0] in layers},
               fast=False)


def test_gradcheck_non_local_block():
    """Every parameter of a non-local block, batch statistics, element by element."""
    X = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    block = randomized(NonLocalBlock2d(3)).double()
    params = dict(block.named_parameters())

    def f(x, *ps):
        return torch.func.functional_call(block, dict(zip(params, ps)), (x,))
    assert torch.autograd.gradcheck(f, (X, *params.values()), eps=1e-6, atol=1e-5, rtol=1e-3)
