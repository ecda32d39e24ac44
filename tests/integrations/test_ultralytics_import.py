"""Ultralytics stays an optional dependency: ``import fgdkern`` never imports it, and
``fgdkern.ultralytics`` without it says which extra to install. Runs without ultralytics."""
from __future__ import annotations

import subprocess
import sys

from tests.integrations.yolo import without


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_import_fgdkern_does_not_import_ultralytics():
    out = run("import sys, fgdkern\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ultralytics'))")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_the_integration_without_ultralytics_names_the_extra():
    out = run(without("ultralytics") + "import fgdkern\n"
              "try:\n"
              "    import fgdkern.ultralytics\n"
              "except ImportError as exc:\n"
              "    print(exc)\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pip install 'fgdkern[ultralytics]'" in out.stdout
