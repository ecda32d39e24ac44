"""The PyTorch reference of FGD against an explicit loop implementation and by hand."""
import math

import numpy as np
import pytest
import torch

from fgdkern import FGDLoss
from fgdkern.reference.fgd import fgd_reference
from tests.helpers import make_loss


def random_masks(N, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    cover = torch.rand(N, H, W, generator=g) < 0.4
    fg = torch.where(cover, torch.rand(N, H, W, generator=g), torch.zeros(()))
    nbg = (~cover).sum((1, 2), keepdim=True).clamp(min=1)
    return fg, (~cover).float() / nbg


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def loop_attention(F, temp):
    N, C, H, W = F.shape
    A_S, A_C = np.zeros((N, H, W)), np.zeros((N, C))
    for n in range(N):
        G_S = np.array([[sum(abs(F[n, c, i, j]) for c in range(C)) / C for j in range(W)]
                        for i in range(H)])
        A_S[n] = H * W * _softmax(G_S.ravel() / temp).reshape(H, W)
        G_C = np.array([sum(abs(F[n, c, i, j]) for i in range(H) for j in range(W)) / (H * W)
                        for c in range(C)])
        A_C[n] = C * _softmax(G_C / temp)
    return A_S, A_C


def loop_channel_add(F, conv_mask, mlp):
    """GcBlock shift of every image, one scalar operation at a time."""
    N, C, H, W = F.shape
    w, b = conv_mask.weight.detach().double().numpy().ravel(), float(conv_mask.bias.detach())
    W1, b1 = mlp[0].weight.detach().double().numpy()[:, :, 0, 0], mlp[0].bias.detach().double().numpy()
    g, beta = mlp[1].weight.detach().double().numpy().ravel(), mlp[1].bias.detach().double().numpy().ravel()
    W2, b2 = mlp[3].weight.detach().double().numpy()[:, :, 0, 0], mlp[3].bias.detach().double().numpy()
    out = np.zeros((N, C))
    for n in range(N):
        logits = np.array([sum(w[c] * F[n, c, i, j] for c in range(C)) + b
                           for i in range(H) for j in range(W)])
        p = _softmax(logits)
        ctx = np.array([sum(p[i * W + j] * F[n, c, i, j] for i in range(H) for j in range(W))
                        for c in range(C)])
        h = W1 @ ctx + b1
        h = (h - h.mean()) / math.sqrt(h.var() + mlp[1].eps) * g + beta
        out[n] = W2 @ np.maximum(h, 0) + b2
    return out


def loop_fgd(S, T, fg, bg, module, temp):
    S, T, fg, bg = (x.detach().double().numpy() for x in (S, T, fg, bg))
    N, C, H, W = S.shape
    A_S_s, A_C_s = loop_attention(S, temp)
    A_S_t, A_C_t = loop_attention(T, temp)
    add_s = loop_channel_add(S, module.conv_mask_s, module.channel_add_conv_s)
    add_t = loop_channel_add(T, module.conv_mask_t, module.channel_add_conv_t)
    fg_l = bg_l = rela = 0.0
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    d2 = (S[n, c, i, j] - T[n, c, i, j]) ** 2
                    att = A_S_t[n, i, j] * A_C_t[n, c]
                    fg_l += fg[n, i, j] * att * d2
                    bg_l += bg[n, i, j] * att * d2
                    rela += (S[n, c, i, j] + add_s[n, c] - T[n, c, i, j] - add_t[n, c]) ** 2
    mask = np.abs(A_C_s - A_C_t).sum() + np.abs(A_S_s - A_S_t).sum()
    return [fg_l / N, bg_l / N, mask / N, rela / N]


@pytest.mark.parametrize("N,C,H,W,temp", [(1, 2, 2, 3, 0.5), (2, 4, 3, 3, 0.8), (3, 6, 1, 4, 0.5)])
def test_reference_matches_loop_implementation(N, C, H, W, temp):
    m = make_loss(C, C, seed=N).double()
    g = torch.Generator().manual_seed(C)
    S = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    T = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    fg, bg = random_masks(N, H, W, seed=H)
    got = [float(t.detach()) for t in fgd_reference(S, T, fg, bg, m.gc_block("s"), m.gc_block("t"), temp)]
    want = loop_fgd(S, T, fg, bg, m, temp)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_reference_by_hand():
    """One image, two equal channels, two pixels: every term is a short formula."""
    m = FGDLoss(2, 2).double()  # fresh: zero last convs -> the GcBlock shift is 0
    S = torch.tensor([1.0, -2.0], dtype=torch.float64).expand(1, 2, 1, 2)
    T = torch.tensor([0.5, 1.0], dtype=torch.float64).expand(1, 2, 1, 2)
    fg = torch.tensor([[[0.5, 0.0]]])
    bg = torch.tensor([[[0.0, 1.0]]])
    temp = 0.5
    # teacher A_S = 2 softmax(|T| / temp) = 2 softmax([1, 2]); A_C = 2 softmax([x, x]) = 1
    e1, e2 = math.exp(1.0), math.exp(2.0)
    a_t = [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]
    s1, s2 = math.exp(2.0), math.exp(4.0)
    a_s = [2 * s1 / (s1 + s2), 2 * s2 / (s1 + s2)]
    with torch.no_grad():  # plain numbers to compare
        terms = fgd_reference(S, T, fg, bg, m.gc_block("s"), m.gc_block("t"), temp)
    assert float(terms.fg_loss) == pytest.approx(2 * 0.5 * a_t[0] * 0.25, rel=1e-12)
    assert float(terms.bg_loss) == pytest.approx(2 * 1.0 * a_t[1] * 9.0, rel=1e-12)
    assert float(terms.mask_loss) == pytest.approx(abs(a_s[0] - a_t[0]) + abs(a_s[1] - a_t[1]),
                                                   rel=1e-12)
    assert float(terms.rela_loss) == pytest.approx(2 * (0.25 + 9.0), rel=1e-12)


class _Terms(torch.nn.Module):
    """align + reference terms as one module, so functional_call can swap every parameter."""

    def __init__(self, loss, T, fg, bg):
        super().__init__()
        self.loss, self.T, self.fg, self.bg = loss, T, fg, bg

    def forward(self, S):
        S = S if self.loss.align is None else self.loss.align(S)
        return torch.stack(list(fgd_reference(S, self.T, self.fg, self.bg, self.loss.gc_block("s"), self.loss.gc_block("t"), 0.5)))


@pytest.mark.parametrize("align", [False, True])
def test_reference_gradcheck(align):
    """float64 gradcheck of S and every parameter, through the align layer too."""
    Cs, Ct = (3, 4) if align else (4, 4)
    g = torch.Generator().manual_seed(1)
    S = torch.randn(2, Cs, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(2, Ct, 3, 2, generator=g, dtype=torch.float64)
    model = _Terms(make_loss(Cs, Ct, seed=3).double(), T, *random_masks(2, 3, 2, seed=2))
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    assert len(names) == (18 if align else 16)  # every weight and bias, LayerNorm too

    def f(S, *params):
        return torch.func.functional_call(model, dict(zip(names, params)), (S,))

    assert torch.autograd.gradcheck(f, (S, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_teacher_gets_no_gradient():
    m = make_loss(4, 4)
    S = torch.randn(1, 4, 3, 3, requires_grad=True)
    T = torch.randn(1, 4, 3, 3, requires_grad=True)
    fg, bg = random_masks(1, 3, 3)
    sum(fgd_reference(S, T, fg, bg, m.gc_block("s"), m.gc_block("t"), 0.5)).backward()
    assert T.grad is None and S.grad is not None
    assert m.conv_mask_t.weight.grad is not None  # the teacher GcBlock trains through rela_loss


def test_reference_by_hand_two_images_gcblock_shift():
    """Two images, four channels of different magnitude (A_C != 1), a GcBlock with set
    weights (shift != 0), each term written out in plain Python loops from the paper
    (/work/shared/papers/000_*.txt): G^S eq. (5), G^C eq. (6), A^S eq. (7), A^C eq. (8),
    the feature loss eq. (9) with the masks M S and (1 - M) S of eqs. (2)-(4) given as fg
    and bg, the attention loss eq. (10) (L1), the global loss eq. (12); sums over the
    batch divided by N, as the implementation does (docs/fgd.md)."""
    N, C, H, W, temp = 2, 4, 1, 3, 0.5
    S = [[[[0.5, -1.0, 2.0]], [[0.0, 0.3, -0.2]], [[1.5, 1.0, -2.5]], [[-0.4, 0.1, 0.0]]],
         [[[1.0, 0.0, -0.5]], [[2.0, -1.5, 0.5]], [[0.2, 0.2, 0.2]], [[-3.0, 1.0, 0.0]]]]
    T = [[[[1.0, -0.5, 1.0]], [[0.5, 0.5, -1.0]], [[2.0, 0.0, -1.0]], [[0.0, 0.2, 0.3]]],
         [[[0.5, 0.5, 0.0]], [[1.0, -1.0, 1.0]], [[0.0, 0.5, 0.0]], [[-2.0, 2.0, 1.0]]]]
    fg = [[[0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0]]]
    bg = [[[0.0, 0.0, 1.0]], [[0.5, 0.0, 0.5]]]
    m = FGDLoss(C, C).double()
    # GcBlocks: W_k (conv_mask), W_v1 (C -> C/2), LN(gamma, beta), W_v2 (C/2 -> C)
    blocks = {"s": dict(k=[0.3, -0.2, 0.5, 0.1], k0=0.7,
                        v1=[[0.2, -0.1, 0.4, 0.3], [-0.5, 0.2, 0.1, 0.6]], v1b=[0.1, -0.2],
                        g=[1.5, 0.5], b=[0.2, -0.3],
                        v2=[[0.4, -0.3], [0.2, 0.1], [-0.6, 0.5], [0.3, 0.3]],
                        v2b=[0.05, -0.1, 0.2, 0.0]),
              "t": dict(k=[-0.4, 0.3, 0.2, -0.1], k0=-0.2,
                        v1=[[0.1, 0.3, -0.2, 0.5], [0.4, -0.6, 0.2, 0.1]], v1b=[-0.1, 0.3],
                        g=[0.8, 1.2], b=[-0.1, 0.4],
                        v2=[[-0.2, 0.5], [0.3, -0.4], [0.1, 0.2], [0.6, -0.1]],
                        v2b=[0.1, 0.0, -0.2, 0.3])}
    with torch.no_grad():
        for w, p in blocks.items():
            conv, mlp = getattr(m, f"conv_mask_{w}"), getattr(m, f"channel_add_conv_{w}")
            conv.weight.copy_(torch.tensor(p["k"], dtype=torch.float64).reshape(1, C, 1, 1))
            conv.bias.fill_(p["k0"])
            mlp[0].weight.copy_(torch.tensor(p["v1"], dtype=torch.float64).reshape(2, C, 1, 1))
            mlp[0].bias.copy_(torch.tensor(p["v1b"], dtype=torch.float64))
            mlp[1].weight.copy_(torch.tensor(p["g"], dtype=torch.float64).reshape(2, 1, 1))
            mlp[1].bias.copy_(torch.tensor(p["b"], dtype=torch.float64).reshape(2, 1, 1))
            mlp[3].weight.copy_(torch.tensor(p["v2"], dtype=torch.float64).reshape(C, 2, 1, 1))
            mlp[3].bias.copy_(torch.tensor(p["v2b"], dtype=torch.float64))
    eps = m.channel_add_conv_s[1].eps
    pixels = [(i, j) for i in range(H) for j in range(W)]

    def softmax(xs):
        e = [math.exp(x - max(xs)) for x in xs]
        return [v / sum(e) for v in e]

    def attention(F, n):
        G_S = [sum(abs(F[n][c][i][j]) for c in range(C)) / C for i, j in pixels]       # (5)
        G_C = [sum(abs(F[n][c][i][j]) for i, j in pixels) / (H * W) for c in range(C)]  # (6)
        A_S = [H * W * a for a in softmax([g / temp for g in G_S])]                     # (7)
        A_C = [C * a for a in softmax([g / temp for g in G_C])]                         # (8)
        return A_S, A_C

    def shift(F, n, p):  # eq. (12) without its "F +": W_v2 ReLU(LN(W_v1 context))
        weights = softmax([sum(p["k"][c] * F[n][c][i][j] for c in range(C)) + p["k0"]
                           for i, j in pixels])
        context = [sum(wt * F[n][c][i][j] for wt, (i, j) in zip(weights, pixels)) for c in range(C)]
        h = [sum(p["v1"][o][c] * context[c] for c in range(C)) + p["v1b"][o] for o in range(2)]
        mean = sum(h) / 2
        var = sum((x - mean) ** 2 for x in h) / 2
        h = [max(0.0, (x - mean) / math.sqrt(var + eps) * p["g"][o] + p["b"][o])
             for o, x in enumerate(h)]
        return [sum(p["v2"][c][o] * h[o] for o in range(2)) + p["v2b"][c] for c in range(C)]

    fg_loss = bg_loss = mask_loss = rela_loss = 0.0
    for n in range(N):
        A_S_t, A_C_t = attention(T, n)
        A_S_s, A_C_s = attention(S, n)
        assert max(A_C_t) - min(A_C_t) > 0.5  # unequal channel attention
        add_s, add_t = shift(S, n, blocks["s"]), shift(T, n, blocks["t"])
        assert min(abs(a) for a in add_s + add_t) > 1e-3  # a non-zero shift in every channel
        for c in range(C):
            for k, (i, j) in enumerate(pixels):
                d2 = (T[n][c][i][j] - S[n][c][i][j]) ** 2
                fg_loss += fg[n][i][j] * A_S_t[k] * A_C_t[c] * d2                       # (9)
                bg_loss += bg[n][i][j] * A_S_t[k] * A_C_t[c] * d2                       # (9)
                R_t, R_s = T[n][c][i][j] + add_t[c], S[n][c][i][j] + add_s[c]
                rela_loss += (R_t - R_s) ** 2                                             # (12)
        mask_loss += (sum(abs(a - b) for a, b in zip(A_S_t, A_S_s))
                      + sum(abs(a - b) for a, b in zip(A_C_t, A_C_s)))                # (10)
    want = [fg_loss / N, bg_loss / N, mask_loss / N, rela_loss / N]
    St, Tt = torch.tensor(S, dtype=torch.float64), torch.tensor(T, dtype=torch.float64)
    fg_t, bg_t = torch.tensor(fg, dtype=torch.float64), torch.tensor(bg, dtype=torch.float64)
    with torch.no_grad():
        got = fgd_reference(St, Tt, fg_t, bg_t, m.gc_block("s"), m.gc_block("t"), temp)
    np.testing.assert_allclose([float(t) for t in got], want, rtol=1e-12)
