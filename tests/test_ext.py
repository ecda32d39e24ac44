"""Without the compiled extension the package still works, on its PyTorch paths, and says so;
with FGDKERN_REQUIRE_EXT=1 (set by CI) a missing extension is an import error instead.

Both run in a subprocess with the extension hidden (``sys.modules["fgdkern._C"] = None``),
whatever this process has loaded and whatever the environment says.
"""
import os
import subprocess
import sys

SCRIPT = r"""
import sys, warnings
sys.modules["fgdkern._C"] = None          # as if the extension were not built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fgdkern
    import fgdkern.losses.fgd
import torch
assert not fgdkern.HAS_EXT
messages = [str(w.message) for w in caught if "extension is not available" in str(w.message)]
assert len(messages) == 1, messages
from fgdkern.losses.fgd import resolve_backend
assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "reference"
loss_fn = fgdkern.FGDLoss(8, 8)
S = torch.randn(2, 8, 6, 10, requires_grad=True)
T = torch.randn(2, 8, 6, 10)
boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.zeros(0, 4)]
loss = loss_fn(S, T, boxes, [(48, 80), (48, 80)])
loss.backward()
assert torch.isfinite(loss) and S.grad is not None
try:
    fgdkern.FGDLoss(8, 8, backend="cpp")(S, T, boxes, [(48, 80), (48, 80)])
except RuntimeError as e:
    assert "extension" in str(e)
else:
    raise AssertionError("backend='cpp' ran without the extension")
print("ok")
"""


REQUIRED = r"""
import sys
sys.modules["fgdkern._C"] = None          # as if the extension were not built
try:
    import fgdkern
except ImportError as e:
    assert "FGDKERN_REQUIRE_EXT=1" in str(e), e
    assert "import of fgdkern._C halted" in str(e), e    # the original load error
    assert isinstance(e.__cause__, ImportError), e.__cause__
    print("raised")
else:
    print("imported")
"""


def _run(script, require):
    env = {k: v for k, v in os.environ.items() if k != "FGDKERN_REQUIRE_EXT"}
    if require:
        env["FGDKERN_REQUIRE_EXT"] = "1"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)


def test_package_works_without_the_extension():
    run = _run(SCRIPT, require=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_required_extension_missing_is_an_import_error():
    run = _run(REQUIRED, require=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "raised"
