"""Helpers of the training-script tests (command lines, logs, state dicts)."""
import json
import pathlib
import socket
import sys

import torch


def smoke_args(out, data_cache, *extra) -> list[str]:
    """The command line of a smoke run into ``out`` on the shared dataset."""
    return ["--preset", "smoke", "--out", str(out), "--data-cache", str(data_cache),
            "--print-freq", "0", *[str(a) for a in extra]]


def run_cli(argv) -> int:
    """``python -m fgdkern.train ARGV`` in this process; the exit code."""
    from fgdkern.train.cli import main
    return main([str(a) for a in argv])


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def losses_of(records: list[dict]) -> list[dict]:
    """The loss values of every step (what must repeat exactly), without times."""
    return [{k: v for k, v in r.items() if k not in ("step_time", "data_time")}
            for r in records]


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    """Two state dicts equal to the last bit."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(argv, nproc: int, module: str = "fgdkern.train") -> list[str]:
    """``torchrun --nproc_per_node NPROC -m MODULE ARGV`` on this machine, a free port."""
    return [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", module, *[str(a) for a in argv]]
