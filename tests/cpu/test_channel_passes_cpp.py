"""The C++ passes of CWD and PKD (csrc/cpu/cwd.cpp, csrc/cpu/pkd.cpp) against their
PyTorch contract, fgdkern.reference.channel_passes, output by output: several levels of
different sizes in one call (many pixel blocks per image, C not a multiple of the lane
count, 1x1 maps), every dtype and memory layout, maps far from 0 (the log-sum-exp's max
and the moments' centring matter), a temperature per level. Also: the same bits for any
thread count, opcheck of the four ops, clear errors and the row names the kernels use."""
import pytest
import torch

from fgdkern import rows
from fgdkern.ops import dispatch
from fgdkern.reference import channel_passes as contract
from fgdkern.rows import CWD_CHAN, PKD_CHAN
from tests.cpu.imitation_cpp import make_maps
from tests.harness import LAYOUTS, LOW_PRECISION, assert_matches_contract

pytestmark = pytest.mark.skipif(not dispatch.available("cwd", "cpp"),
                                reason="C++ channel kernels not built")

ops = torch.ops.fgdkern
DTYPES = [torch.float32, *LOW_PRECISION]
# (N, C, [(H, W), ...])
SHAPES = [
    (2, 24, [(40, 60), (3, 5)]),        # 1024-pixel blocks at C = 24: 3 per image of level 0
    (2, 17, [(7, 9), (1, 1), (5, 3)]),  # C not a multiple of the lanes, a 1x1 level
    (3, 40, [(2, 3), (11, 13)]),        # more channels than pixels
    (1, 256, [(20, 28), (7, 10)]),      # RetinaNet's C: 256-pixel blocks, 3 per image
]
# scale and offset of the maps: unit values, and values near +-80 (exp overflows in float32
# unless the max is taken out first; the moments cancel unless centred)
VALUES = [(1.0, 0.0), (20.0, 60.0)]


def maps(N, C, sizes, dtype, layout, values, seed=0):
    scale, offset = values
    S, T, _ = make_maps(N, C, sizes, torch.float32, layout, seed)
    return ([(s * scale + offset).to(dtype) for s in S],
            [(t * scale - offset).to(dtype) for t in T])


def inv_taus(sizes):
    return [1.0 / (0.5 + k) for k in range(len(sizes))]


def cwd_coefs(S, T, inv_tau, seed=1):
    """lse_s, lse_t of the maps (so that the exponentials are of softmaxes) and random k."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for chan in contract.cwd_stats(S, T, inv_tau):
        k = torch.randn(chan.shape[0], chan.shape[2], generator=g)
        out.append(torch.stack([chan[:, CWD_CHAN.lse_s], chan[:, CWD_CHAN.lse_t], k], 1))
    return out


def pkd_coefs(S, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for chan in contract.pkd_stats(S, T):
        a, b = torch.randn(2, chan.shape[1], generator=g)
        out.append(torch.stack([a, chan[PKD_CHAN.mean_s], b, chan[PKD_CHAN.mean_t]]))
    return out


@pytest.mark.parametrize("values", VALUES, ids=["unit", "far"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,sizes", SHAPES)
def test_cwd_matches_contract(N, C, sizes, dtype, layout, values):
    S, T = maps(N, C, sizes, dtype, layout, values)
    inv_tau = inv_taus(sizes)
    assert_matches_contract(ops.cwd_stats_cpp(S, T, inv_tau), contract.cwd_stats, S, T, inv_tau)
    coef = cwd_coefs(S, T, inv_tau)
    got = ops.cwd_grad_cpp(S, T, coef, inv_tau)
    want = assert_matches_contract(got, contract.cwd_grad, S, T, coef, inv_tau)
    for d, w in zip(got, want):
        assert d.dtype == w.dtype and d.stride() == w.stride()


@pytest.mark.parametrize("values", VALUES, ids=["unit", "far"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,sizes", SHAPES)
def test_pkd_matches_contract(N, C, sizes, dtype, layout, values):
    S, T = maps(N, C, sizes, dtype, layout, values)
    assert_matches_contract(ops.pkd_stats_cpp(S, T), contract.pkd_stats, S, T)
    coef = pkd_coefs(S, T)
    got = ops.pkd_grad_cpp(S, T, coef)
    want = assert_matches_contract(got, contract.pkd_grad, S, T, coef)
    for d, w in zip(got, want):
        assert d.dtype == w.dtype and d.stride() == w.stride()


@pytest.mark.parametrize("op", ["cwd", "pkd"])
def test_same_bits_for_any_thread_count(op):
    S, T = maps(2, 24, [(40, 60), (3, 5)], torch.float32, "contiguous", VALUES[0])
    run = ((lambda: ops.cwd_stats_cpp(S, T, [1.0, 0.5])) if op == "cwd"
           else (lambda: ops.pkd_stats_cpp(S, T)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, threads))
        many = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_opcheck():
    S, T = maps(2, 17, [(7, 9), (1, 1)], torch.float32, "channels_last", VALUES[0])
    inv_tau = [1.0, 2.0]
    for op, args in ((ops.cwd_stats_cpp, (S, T, inv_tau)),
                     (ops.cwd_grad_cpp, (S, T, cwd_coefs(S, T, inv_tau), inv_tau)),
                     (ops.pkd_stats_cpp, (S, T)), (ops.pkd_grad_cpp, (S, T, pkd_coefs(S, T)))):
        torch.library.opcheck(op, args)


def test_bad_arguments_are_named():
    S, T = maps(2, 5, [(3, 4), (2, 2)], torch.float32, "contiguous", VALUES[0])
    with pytest.raises(RuntimeError, match=r"cwd_stats_cpp: inv_tau must be positive .*\[1\]"):
        ops.cwd_stats_cpp(S, T, [1.0, 0.0])
    with pytest.raises(RuntimeError, match=r"cwd_grad_cpp: coef\[0\] must be a float32"):
        ops.cwd_grad_cpp(S, T, [torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)], [1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"pkd_stats_cpp: .*S has 2 levels, T has 1"):
        ops.pkd_stats_cpp(S, T[:1])
    with pytest.raises(RuntimeError, match=r"pkd_grad_cpp: T\[1\] must have the shape of S\[1\]"):
        ops.pkd_grad_cpp(S, [T[0], T[0]], pkd_coefs(S, T))


def test_row_names_match_fgdkern_rows():
    tables = dict(CWD_CHAN=rows.CWD_CHAN, CWD_COEF=rows.CWD_COEF, PKD_CHAN=rows.PKD_CHAN,
                  PKD_COEF=rows.PKD_COEF)
    want = [f"{table}.{name}" for table, names in tables.items() for name in names]
    assert list(ops.channel_rows_cpp()) == want
