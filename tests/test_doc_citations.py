"""Citations of the documentation resolve.

Code comments, pages and the top-level files (README, Makefile, CI script,
pyproject.toml, setup.py) cite a section of a page in docs/ as
``docs/<page>.md, "<Section>"`` (or ``<page>.md, "<Section>"`` between pages).
Each must name a heading of that page or the bold label that opens one of its
paragraphs, so a reader who follows it finds the text.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ["fgdkern", "csrc", "tests", "bench", "docs"]
SUFFIXES = {".py", ".h", ".cpp", ".cu", ".md"}
TOP_LEVEL = ["README.md", "Makefile", ".ci/run", "pyproject.toml", "setup.py"]
CITATION = re.compile(r'(?<![\w/.])(?:docs/)?([\w-]+\.md),?\s+"([^"]+)"')
# a line break inside a comment, with the next line's comment marker
LINE_BREAK = re.compile(r"\s*\n\s*(?:#|//|\*)?\s*")
HEADING = re.compile(r"^#+\s+(.+?)\s*$", re.M)
BOLD_LABEL = re.compile(r"^\s*(?:[*-]\s+)?\*\*(.+?)\.?\*\*", re.M)


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    return set(HEADING.findall(text)) | set(BOLD_LABEL.findall(text))


def citations() -> list[tuple[str, str, str]]:
    """(file, page, section) of every citation of a page that exists in docs/."""
    pages = {p.name for p in DOCS.glob("*.md")}
    found = []
    files = [ROOT / name for name in TOP_LEVEL]
    for top in SCANNED:
        files += [p for p in sorted((ROOT / top).rglob("*"))
                  if p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    for path in files:
        text = LINE_BREAK.sub(" ", path.read_text(errors="ignore"))
        found += [(str(path.relative_to(ROOT)), page, section)
                  for page, section in CITATION.findall(text) if page in pages]
    return found


def test_citations_are_found():
    """The scan sees the citations the code is written with (it cannot pass by finding none)."""
    cited = citations()
    assert len(cited) > 50
    assert ("fgdkern/triton/tiles.py", "gpu.md", "Aligned levels") in cited


def test_every_cited_section_exists():
    table = {page.name: anchors(page) for page in DOCS.glob("*.md")}
    missing = sorted({c for c in citations() if c[2] not in table[c[1]]})
    assert not missing, "citations of sections that do not exist:\n" + "\n".join(
        f"{path}: {page}, \"{section}\"" for path, page, section in missing)
