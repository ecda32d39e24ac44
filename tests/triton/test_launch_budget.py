"""Launches per training step on the GPU code path, counted under the interpreter
(tests/launches.py): CWD, PKD and PFI run their two passes and the small math between
them (fgdkern/ops/two_pass.py) as five Triton launches for any number of levels, and a
step launches at most BUDGET kernels in all; FGD runs its two passes and its small math
(fgdkern/triton/fgd_terms.py) as seven, and a step with its masks at most FGD_BUDGET
(docs/gpu.md, "Launches on a GPU"). No call waits for the device. What a step
launches is printed with -s."""
import pytest
import torch

import fgdkern
from fgdkern.ops import rasterize
from tests.harness import INTERPRETED
from tests.launches import count_launches, fwd_bwd
from tests.triton.common import needs_kernels
from tests.triton.test_launches import _fgd_step

pytestmark = [needs_kernels, pytest.mark.skipif(
    not INTERPRETED, reason="counts interpreted launches (TRITON_INTERPRET=1)")]

BUDGET = 12
FGD_BUDGET = 24
# FKD without the non-local term: a fixed part, and per level the 1x1 adaptation's forward
# and backward (5 kernels on a GPU: tests/launches.py, COMPILED_OPS) and the sum of its
# input gradient with the passes' (the code variant's f; the paper variant's align, where
# the widths differ).
FKD_BUDGET, FKD_PER_LEVEL = 16, 6
STATS = ["imitation_stats_fwd_kernel", "imitation_stats_combine_kernel"]
FKD_KERNELS = {
    "code": [*STATS, "fkd_terms_kernel", "fkd_terms_grad_kernel", "imitation_grad_bwd_kernel"],
    "paper": [*STATS, "fkd_paper_masks_kernel", *STATS, "fkd_paper_terms_kernel",
              "fkd_paper_terms_grad_kernel", "imitation_grad_bwd_kernel"]}
FGD_KERNELS = ["fgd_stats_fwd_kernel", "fgd_stats_combine_kernel", "fgd_terms_kernel",
               "fgd_pixel_coef_kernel", "fgd_terms_grad_kernel", "fgd_grad_bwd_kernel",
               "fgd_grad_combine_kernel"]
SMALL_MATH = ["level_sums_kernel", "map_items_kernel"]
MODULES = {
    "cwd": (lambda: fgdkern.CWDLoss(tau=2.0, loss_weight=3.0, backend="triton"),
            ["cwd_stats_fwd_kernel", "cwd_stats_combine_kernel", *SMALL_MATH,
             "cwd_grad_bwd_kernel"]),
    "pkd": (lambda: fgdkern.PKDLoss(loss_weight=3.0, backend="triton"),
            ["pkd_stats_fwd_kernel", "pkd_stats_combine_kernel", *SMALL_MATH,
             "pkd_grad_bwd_kernel"]),
    "pfi": (lambda: fgdkern.PFILoss(loss_weight=3.0, backend="triton"),
            ["imitation_stats_fwd_kernel", "imitation_stats_combine_kernel", *SMALL_MATH,
             "imitation_grad_bwd_kernel"]),
}


def pyramid(levels: int, seed: int = 0, classes: int = 0):
    """Student maps (gradient wanted) and the other inputs; with classes, PFI's: the
    teacher's features and both probability maps."""
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(2, 8, max(6 >> k, 1), max(5 >> k, 1), generator=g).requires_grad_()
         for k in range(levels)]
    T = [torch.randn(s.shape, generator=g) for s in S]
    if not classes:
        return S, [T]
    probs = [[torch.rand(2, classes, *s.shape[2:], generator=g) for s in S] for _ in range(2)]
    return S, [T, *probs]


@pytest.mark.parametrize("levels", [1, 3, 8])
@pytest.mark.parametrize("loss", sorted(MODULES))
def test_two_pass_losses_launch_within_the_budget(loss, levels):
    make, kernels = MODULES[loss]
    S, rest = pyramid(levels, classes=3 if loss == "pfi" else 0)
    step = fwd_bwd(make(), S, *rest)
    step()  # one-time uploads (level tables) are not part of a step
    got = count_launches(step)
    print(f"{loss}, {levels} levels: {got}")
    assert got.triton == kernels, got
    assert got.total <= BUDGET, got
    assert got.syncs == [], got


@pytest.mark.parametrize("levels", [1, 3, 8])
def test_fgd_launches_within_the_budget(levels, monkeypatch):
    """MultiLevelFGDLoss fwd+bwd with its masks from boxes. The boxes are host tensors here;
    on the GPU path they are on the device, where they are not checked on the host
    (docs/fgd.md, "Validation") and the packed counts and image sizes are copied to it:
    each copy counts as a launch."""
    copies = []
    real = rasterize.host_to
    monkeypatch.setattr(rasterize, "_checking", lambda t, check_finite: check_finite)
    monkeypatch.setattr(rasterize, "host_to", lambda t, d: copies.append(t) or real(t, d))
    step = _fgd_step(levels, 16, device="cpu")
    step()
    copies.clear()
    got = count_launches(step)
    got.torch += ["host_to"] * len(copies)
    print(f"fgd, {levels} levels: {got}")
    assert got.triton == FGD_KERNELS, got
    assert got.torch.count("fgdkern::rasterize_boxes") == 4, got
    assert got.total <= FGD_BUDGET, got
    assert got.syncs == [], got


@pytest.mark.parametrize("levels", [1, 3, 8])
@pytest.mark.parametrize("variant,Cs", [("code", 8), ("paper", 8), ("paper", 5)])
def test_fkd_launches_within_the_budget(variant, Cs, levels):
    """MultiLevelFKDLoss (non_local=False) fwd+bwd, the gradients of S and of every
    parameter (the adaptations' and the mimics'); Cs = 5: the paper variant's align."""
    g = torch.Generator().manual_seed(0)
    S, (T,) = pyramid(levels)
    S = [torch.randn(s.shape[0], Cs, *s.shape[2:], generator=g).requires_grad_() for s in S]
    loss = fgdkern.MultiLevelFKDLoss(levels, Cs, 8, variant=variant, non_local=False,
                                     backend="triton")
    leaves = S + list(loss.parameters())

    def step():
        return torch.autograd.grad(loss(S, T), leaves)

    step()
    got = count_launches(step)
    print(f"fkd {variant}, Cs={Cs}, {levels} levels: {got}")
    assert got.triton == FKD_KERNELS[variant], got
    assert got.total <= FKD_BUDGET + FKD_PER_LEVEL * levels, got
    assert got.syncs == [], got
