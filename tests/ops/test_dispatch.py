"""Which implementation runs (fgdkern.ops.dispatch): a Triton older than the oldest the
kernels are checked with is not used, and asking for it by name says why."""
import pytest
import torch

from fgdkern.ops import dispatch


@pytest.mark.parametrize("version", [(3, 0), (3, 1)])
def test_triton_older_than_checked_is_not_used(monkeypatch, version):
    monkeypatch.setattr(dispatch, "TRITON_VERSION", version)
    monkeypatch.setattr(dispatch, "HAS_TRITON", version >= dispatch.MIN_TRITON)
    cuda = torch.device("cuda")
    assert dispatch.resolve("fgd", "auto", cuda, torch.float32) == "reference"
    with pytest.raises(RuntimeError, match=rf"triton >= 3\.2.*this one is {version[0]}\.{version[1]}"):
        dispatch.resolve("fgd", "triton", cuda, torch.float32)


def test_triton_of_the_checked_versions_is_used(monkeypatch):
    monkeypatch.setattr(dispatch, "TRITON_VERSION", dispatch.MIN_TRITON)
    monkeypatch.setattr(dispatch, "HAS_TRITON", True)
    assert dispatch.resolve("fgd", "auto", torch.device("cuda"), torch.float32) == "triton"


def test_installed_version_is_read():
    triton = pytest.importorskip("triton")
    assert dispatch.TRITON_VERSION == tuple(int(x) for x in triton.__version__.split(".")[:2])
