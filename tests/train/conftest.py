"""Fixtures of the training-script tests: one built-in dataset and one smoke run per session.

The smoke run (every role, ``--preset smoke``) is made once and read by several
test modules; tests that need their own run reuse its dataset (``--data-cache``)
and its teacher (``--teacher``). Nothing here runs unless a test asks for it.
"""
import json
import pathlib

import pytest

from tests.train.helpers import run_cli, smoke_args


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("train-data") / "synthetic"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_cache) -> pathlib.Path:
    """``python -m fgdkern.train --preset smoke`` (all roles), run once; returns --out."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    assert run_cli(smoke_args(out, data_cache)) == 0
    return out


@pytest.fixture(scope="session")
def smoke_report(smoke_run) -> dict:
    return json.loads((smoke_run / "report.json").read_text())
