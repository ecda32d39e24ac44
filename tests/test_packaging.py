"""The sdist ships every source it needs, and making it needs no torch.

One sdist is built from a copy of the tree (so the checkout stays untouched)
with ``import torch`` made to fail, and its file list is compared with a walk
of csrc/ and fgdkern/: a header or module added there and not shipped fails
here. A few probe files of new kinds are added to the copy, to show that the
MANIFEST.in rules cover files that do not exist yet.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ("csrc", "fgdkern")
COPIED = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "requirements-dev.txt",
          "Makefile", "csrc", "fgdkern", "docs", "tests", "bench")
BUILD_PRODUCTS = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build")
PROBES = ("csrc/cpu/probe_new.h", "csrc/cuda/probe_new.cuh", "csrc/probe_dir/probe.cpp",
          "fgdkern/probe_pkg/probe.json")


def copy_tree(dst: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=BUILD_PRODUCTS)
        elif src.exists():
            shutil.copy2(src, dst / name)
    for probe in PROBES:
        (dst / probe).parent.mkdir(parents=True, exist_ok=True)
        (dst / probe).write_text("// probe\n" if not probe.endswith(".json") else "{}\n")


def torch_blocker(dst: Path) -> Path:
    """A folder whose ``torch`` package fails to import: put first on PYTHONPATH."""
    (dst / "torch").mkdir(parents=True)
    (dst / "torch" / "__init__.py").write_text(
        "raise ImportError('making the sdist must not import torch')\n")
    return dst


def build_sdist(src: Path, out: Path, blocker: Path) -> Path:
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation",
               "--skip-dependency-check", "--outdir", str(out), str(src)]
    else:
        cmd = [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    run = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}"
    (sdist,) = out.glob("fgdkern-*.tar.gz")
    return sdist


def shipped_files(sdist: Path) -> set:
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    return {name.split("/", 1)[1] for name in names if "/" in name}


def files_under(root: Path, trees) -> set:
    return {p.relative_to(root).as_posix() for tree in trees
            for p in (root / tree).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sdist_and_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdist")
    src = tmp / "src"
    src.mkdir()
    copy_tree(src)
    sdist = build_sdist(src, tmp / "dist", torch_blocker(tmp / "blocker"))
    return shipped_files(sdist), src


def test_sdist_ships_every_source_file(sdist_and_tree):
    shipped, src = sdist_and_tree
    missing = sorted(files_under(src, TREES) - shipped)
    assert not missing, f"the sdist lacks {missing}: add them to MANIFEST.in"
    assert not [p for p in PROBES if p not in shipped]


def test_sdist_ships_the_build_files_and_no_build_products(sdist_and_tree):
    shipped, _ = sdist_and_tree
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        assert name in shipped
    products = [n for n in shipped if n.endswith((".so", ".pyc", ".o")) or "__pycache__" in n]
    assert not products


def test_one_version():
    pyproject = (ROOT / "pyproject.toml").read_text()
    init = (ROOT / "fgdkern" / "__init__.py").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert f'__version__ = "{version}"' in init
