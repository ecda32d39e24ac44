"""--distill cwd, pkd, mgd: flags, presets from the published configs, the modules built
(connectors where the FPN widths differ) and their logged terms."""
from collections import OrderedDict

import pytest
import torch

import fgdkern
from fgdkern.train import cli, distill


def test_presets_of_the_published_configs():
    a = cli.parse_args(["--preset", "smoke", "--distill", "mgd+cwd+pkd"])
    assert a.distill == "cwd+pkd+mgd"
    cfg = distill.config(a, 16, 32)
    assert cfg["cwd"] == dict(student_channels=16, teacher_channels=32, tau=1.0,
                              loss_weight=10.0, backend="auto")
    assert cfg["pkd"]["loss_weight"] == 10.0
    assert cfg["mgd"] == dict(student_channels=16, teacher_channels=32, alpha_mgd=2e-5,
                              lambda_mgd=0.65, backend="auto")
    a = cli.parse_args(["--preset", "smoke", "--arch", "fasterrcnn", "--distill", "pkd"])
    assert distill.config(a, 16, 16)["pkd"]["loss_weight"] == 6.0
    a = cli.parse_args(["--preset", "smoke", "--distill", "cwd", "--cwd-tau", "4",
                        "--cwd-weight", "1", "--cwd-backend", "torch"])
    assert distill.config(a, 8, 8)["cwd"] == dict(student_channels=8, teacher_channels=8,
                                                  tau=4.0, loss_weight=1.0, backend="torch")


@pytest.mark.parametrize("argv,message", [
    (["--distill", "cwd", "--cwd-tau", "0"], "--cwd-tau must be positive"),
    (["--distill", "mgd", "--mgd-lambda", "1"], "--mgd-lambda must lie in [0, 1)"),
    (["--distill", "pkd", "--mgd-alpha", "1e-5"], "--mgd-alpha: unused with --distill pkd"),
    (["--distill", "cwd+cwd"], "a loss is named twice"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--preset", "smoke", *argv])
    assert exc.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_modules_and_terms():
    a = cli.parse_args(["--preset", "smoke", "--distill", "cwd+pkd+mgd"])
    losses = distill.build(distill.config(a, 16, 32))
    assert isinstance(losses["cwd"].loss, fgdkern.CWDLoss)
    assert len(losses["pkd"].connector) == distill.FPN_LEVELS
    assert losses["pkd"].connector[0].weight.shape == (32, 16, 1, 1)
    assert losses["mgd"].generation[4][0].weight.shape == (32, 32, 3, 3)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    feats_S = OrderedDict((str(k), torch.randn(2, 16, h, w, requires_grad=True))
                          for k, (h, w) in enumerate(sizes))
    feats_T = OrderedDict((str(k), torch.randn(2, 32, h, w)) for k, (h, w) in enumerate(sizes))
    terms = {}
    for name in distill.CHANNEL_TERMS:
        terms.update(distill.channel_terms(name, losses[name], feats_S, feats_T))
    assert sorted(terms) == ["cwd/kl", "mgd/generation", "pkd/pearson"]
    sum(terms.values()).backward()
    assert feats_S["0"].grad is not None
    assert losses["cwd"].connector[0].weight.grad is not None
    assert distill.build(distill.config(a, 32, 32))["cwd"].connector is None
