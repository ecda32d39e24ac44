"""What the CWD and PKD loss tests share (tests/losses/test_cwd.py, test_pkd.py,
test_channel_losses.py): the cases' builders and the harness's run of a module."""
import torch

from fgdkern import CWDLoss, PKDLoss
from tests.helpers import channel_backends

FUSED = {"cwd": channel_backends("cwd", ("cwd_stats", "cwd_grad")),
         "pkd": channel_backends("pkd", ("pkd_stats", "pkd_grad"))}


def build_cwd(N, widths, sizes, tau=1.0, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, c, h, w, generator=g) * 2 for c, (h, w) in zip(widths, sizes)]
    T = [torch.randn(N, c, h, w, generator=g) * 3 + 0.5 for c, (h, w) in zip(widths, sizes)]
    return CWDLoss(tau=tau, loss_weight=3.0), [s.to(device, dtype) for s in S], \
        [t.to(device, dtype) for t in T]


def build_pkd(N, widths, sizes, student_sizes=None, dtype=torch.float32, device="cpu", seed=0):
    """The teacher's maps of ``sizes``; the student's of ``student_sizes`` (else the same),
    correlated with the teacher's so that r is neither 0 nor 1."""
    g = torch.Generator().manual_seed(seed)
    T = [torch.randn(N, c, h, w, generator=g) * 3 + 0.5 for c, (h, w) in zip(widths, sizes)]
    S = [0.4 * t + torch.randn(t.shape, generator=g) for t in T]
    if student_sizes is not None:
        S = [torch.randn(N, c, h, w, generator=g) for c, (h, w) in zip(widths, student_sizes)]
    return PKDLoss(loss_weight=3.0), [s.to(device, dtype) for s in S], \
        [t.to(device, dtype) for t in T]


BUILD = {"cwd": build_cwd, "pkd": build_pkd}


def loss_and_grads(module, S, T, backend):
    """(per-level terms, weighted loss, dS by name) of module on S, T through backend."""
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    terms = module.terms(S, T)
    loss = module.loss_weight * terms[0]
    grads = torch.autograd.grad(loss, S)
    names = [f"S[{k}]" for k in range(len(S))]
    return list(terms.level_losses[:, None].unbind(0)), loss, dict(zip(names, grads))


def runner(module, S, T):
    """harness.assert_matches_reference's run(backend, float64) of module on S, T."""
    def run(backend, float64):
        if float64:
            return loss_and_grads(module, [s.double() for s in S], [t.double() for t in T],
                                  backend)
        return loss_and_grads(module, S, T, backend)
    return run
