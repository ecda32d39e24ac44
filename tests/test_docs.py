"""The ```python blocks of the documentation run, as a reader would copy them.

docs/integrations.md and docs/trainers.md: every python block runs; the blocks
of one ``## `` section in order, in one namespace. A section whose text has the line
``*Continues from [A](#a), [B](#b).*`` first runs the blocks of sections A and B
(in that order) in the same namespace. Whatever a snippet needs that a user
already has is made by the page itself, in blocks it calls stand-ins; this
file adds nothing to that page's namespaces. Two things differ from a user's
run, both for speed and both stated on the page: "torch.compile" runs with
``backend="aot_eager"`` (Dynamo and AOTAutograd, fullgraph=True; Inductor is
tests/losses/test_fgd_compile.py's), and "DistributedDataParallel" runs in the
single-process gloo group (world_size=1, a file in a temporary directory as
init_method) that the page's own stand-in block creates.

README.md and docs/fgd.md: their python blocks are fragments that use names
the surrounding text describes (a detector, a loss, a checkpoint file). They
run too, each section after the context below (CONTEXTS), which makes exactly
those names (docs/pfi.md, docs/rm.md, docs/fkd.md, docs/cwd.md, docs/pkd.md and
docs/mgd.md need none: their blocks make their own inputs); on every page a python block that is not meant to run must be preceded by the
line ``<!-- doctest: skip: <reason> -->`` and is then reported as skipped with
that reason, never left out silently.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("docs/integrations.md", "docs/trainers.md", "README.md", "docs/fgd.md", "docs/pfi.md",
         "docs/rm.md", "docs/fkd.md", "docs/cwd.md", "docs/pkd.md", "docs/mgd.md")
SELF_CONTAINED = "docs/integrations.md"   # stand-ins in the page, no CONTEXTS
SKIP_MARK = re.compile(r"^<!--\s*doctest:\s*skip:\s*(?P<reason>\S.*?)\s*-->$")
CONTINUES = re.compile(r"^\*Continues from (?P<links>.+)\.\*$")
LINK = re.compile(r"\[(?P<name>[^\]]+)\]\(#[^)]*\)")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")


@dataclass
class Block:
    page: str
    section: str
    line: int          # 1-based line of the first code line
    code: str
    skip: str | None   # the reason, when marked not to run


@dataclass
class Section:
    page: str
    name: str
    continues: list = field(default_factory=list)
    blocks: list = field(default_factory=list)


def parse(page: str, text: str) -> dict:
    """The ``## `` sections of a markdown page, in order: their python blocks and links."""
    sections = {"": Section(page, "")}
    current = sections[""]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            closing = next((j for j in range(i + 1, len(lines))
                            if lines[j].strip() == fence["fence"]), None)
            if closing is None:
                raise AssertionError(f"{page}:{i + 1}: a code block is never closed")
            lang = (fence["info"].split() or [""])[0].lower()
            if lang in ("py", "python3", "pycon", "ipython"):
                raise AssertionError(f"{page}:{i + 1}: tag python blocks as ```python, "
                                     f"not {lang!r}, so that they are run")
            if lang == "python":
                prev = next((lines[j].strip() for j in range(i - 1, -1, -1)
                             if lines[j].strip()), "")
                mark = SKIP_MARK.match(prev)
                current.blocks.append(Block(page, current.name, i + 2,
                                            "\n".join(lines[i + 1:closing]) + "\n",
                                            mark["reason"] if mark else None))
            i = closing + 1
            continue
        if line.startswith("## "):
            name = line[3:].strip()
            current = sections.setdefault(name, Section(page, name))
        else:
            cont = CONTINUES.match(line.strip())
            if cont:
                current.continues = LINK.findall(cont["links"])
        i += 1
    return sections


@functools.lru_cache(maxsize=None)
def page(name: str) -> dict:
    return parse(name, (ROOT / name).read_text())


def run_block(block: Block, ns: dict) -> str:
    """Execute one block in ``ns``; tracebacks name the page and its line. Returns stdout."""
    code = compile("\n" * (block.line - 1) + block.code, f"{ROOT / block.page}", "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, ns)
    return out.getvalue()


def run_section(sec: Section, ns: dict, seen=()) -> list:
    """The runnable blocks of ``sec`` after those of the sections it continues from."""
    outputs = []
    for name in sec.continues:
        if name in seen or name == sec.name:
            raise AssertionError(f"{sec.page}: sections continue from each other in a cycle "
                                 f"({' -> '.join([*seen, sec.name, name])})")
        if name not in page(sec.page):
            raise AssertionError(f"{sec.page}, {sec.name!r} continues from a section that "
                                 f"does not exist: {name!r}")
        outputs += run_section(page(sec.page)[name], ns, (*seen, sec.name))
    for block in sec.blocks:
        if block.skip is None:
            outputs.append(run_block(block, ns))
    return outputs


# What README.md and docs/fgd.md take as given, per section (see the module docstring).
_DETECTOR = """
exec(compile(stand_ins, "docs/integrations.md (Stand-ins)", "exec"))
images, targets = student.transform(images, targets)   # an ImageList: the padded batch
teacher.eval()
det_loss = torch.zeros(())                             # the detector's loss
S = torch.randn(2, 128, 8, 12, requires_grad=True)     # one level of 128 / 256 channels
T = torch.randn(2, 256, 8, 12)
"""
_FGD_CHECKPOINT = """
import os, tempfile, torch, fgdkern
_other = fgdkern.MultiLevelFGDLoss.for_detector("retinanet", 256, 256)
_workdir = tempfile.TemporaryDirectory()
os.chdir(_workdir.name)
torch.save({"meta": {}, "state_dict": _other.fgd_state_dict()}, "epoch_24.pth")
ckpt = {"state_dict": _other.fgd_state_dict(name="loss_fgd_p{k}")}
"""
_FGD_TERMS = """
import torch, fgdkern
loss_fn = fgdkern.MultiLevelFGDLoss.for_detector("retinanet", 256, 256)
_sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
feats_S = [torch.randn(2, 256, h, w) for h, w in _sizes]
feats_T = [torch.randn(2, 256, h, w) for h, w in _sizes]
gt_bboxes = [torch.tensor([[8.0, 10.0, 40.0, 50.0]]), torch.zeros(0, 4)]
img_shapes = [(64, 96), (64, 96)]
"""
CONTEXTS = {
    ("README.md", "Usage"): _DETECTOR,
    ("docs/fgd.md", "Checkpoints of the widely used code"): _FGD_CHECKPOINT,
    ("docs/fgd.md", "Loss scale"): _FGD_TERMS,
}


def stand_ins_code() -> str:
    return "".join(b.code for b in page(SELF_CONTAINED)["Stand-ins"].blocks)


def runnable_sections():
    for name in PAGES:
        for sec in page(name).values():
            if any(b.skip is None for b in sec.blocks):
                yield pytest.param(sec, id=f"{name}::{sec.name or '(top)'}")


def skipped_blocks():
    for name in PAGES:
        for sec in page(name).values():
            for b in sec.blocks:
                if b.skip is not None:
                    yield pytest.param(b, id=f"{name}:{b.line}")


@contextlib.contextmanager
def compile_backend(backend: str):
    """torch.compile with ``backend`` unless the caller names one; counts the calls."""
    original, calls = torch.compile, []

    def patched(*args, **kwargs):
        calls.append(kwargs)
        kwargs.setdefault("backend", backend)
        return original(*args, **kwargs)

    torch.compile = patched
    try:
        yield calls
    finally:
        torch.compile = original
        torch._dynamo.reset()


@pytest.mark.parametrize("sec", list(runnable_sections()))
def test_section_runs(sec, monkeypatch):
    ns = {"__name__": f"doc:{sec.page}:{sec.name}"}
    context = CONTEXTS.get((sec.page, sec.name))
    if sec.page == SELF_CONTAINED:
        assert context is None, f"{SELF_CONTAINED} makes its own stand-ins"
    elif context is not None:
        monkeypatch.chdir(os.getcwd())   # a context may chdir; undone after the test
        ns["stand_ins"] = stand_ins_code()
        exec(compile(context, f"<context of {sec.page}, {sec.name}>", "exec"), ns)
        del ns["stand_ins"]
    with warnings.catch_warnings():
        # the stand-in weights are random: check_loss_scale says so, and that is expected
        warnings.filterwarnings("ignore", message="the FGD loss", category=UserWarning)
        if sec.page == SELF_CONTAINED and sec.name == "torch.compile":
            with compile_backend("aot_eager") as calls:
                run_section(sec, ns)
            assert calls and all(c.get("fullgraph") for c in calls), calls
        elif sec.page == SELF_CONTAINED and sec.name == "DistributedDataParallel":
            import torch.distributed as dist
            try:
                run_section(sec, ns)
                assert not dist.is_initialized(), "the snippet leaves its group open"
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()
        else:
            run_section(sec, ns)


@pytest.mark.parametrize("block", list(skipped_blocks()) or
                         [pytest.param(None, marks=pytest.mark.skip(reason="no block is "
                                                                    "marked not to run"))])
def test_marked_block_is_skipped(block):
    pytest.skip(f"{block.page}:{block.line} is marked not to run: {block.skip}")


def test_parse_marks_and_continuations():
    text = "\n".join([
        "# Page", "```python", "top = 1", "```",
        "## A", "```python", "a = 1", "```", "<!-- doctest: skip: needs a GPU -->", "",
        "```python", "gpu()", "```", "```bash", "make", "```",
        "## B", "*Continues from [A](#a).*", "```python", "b = a + 1", "```"])
    secs = parse("p.md", text)
    assert list(secs) == ["", "A", "B"]
    assert [(b.line, b.code, b.skip) for b in secs["A"].blocks] == [
        (7, "a = 1\n", None), (12, "gpu()\n", "needs a GPU")]
    assert secs["B"].continues == ["A"]
    with pytest.raises(AssertionError, match="tag python blocks"):
        parse("p.md", "```py\nx = 1\n```")
    with pytest.raises(AssertionError, match="never closed"):
        parse("p.md", "```python\nx = 1\n")
