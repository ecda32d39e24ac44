"""The extension fgdkern._C of a mutation's copy, rebuilt after a C++ mistake is planted.

Only the translation units that include the mutated file (directly or through
its headers) are compiled again, with the compiler and flags of the working
tree's own ninja build (build/temp.*/build.ninja: `make ext` builds the
extension in place with ninja); every other object of that build is linked as
it is, with the libraries torch.utils.cpp_extension links. The working tree's
build is read, never written: objects and the library go to the copy.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

INCLUDE = re.compile(r'^#include "([\w/.]+)"', re.M)


def ninja_build(root: Path) -> tuple[dict, list[tuple[Path, str, Path]]]:
    """The variables of the working tree's build.ninja and its units (object, rule, source)."""
    found = sorted(root.glob("build/temp.*/build.ninja"))
    if not found:
        raise RuntimeError("no ninja build of fgdkern._C under build/: run `make ext` with "
                           "ninja installed before planting C++ mistakes")
    text = found[-1].read_text()
    variables = dict(re.findall(r"^(\w+) = (.*)$", text, re.M))
    units = [(Path(obj), rule, Path(src))
             for obj, rule, src in re.findall(r"^build (\S+): (\w+) (\S+)$", text, re.M)]
    return variables, units


def includers(copy: Path, path: str) -> set[Path]:
    """The C++ sources of the copy that include `path` (relative), directly or not."""
    target = (copy / path).resolve()
    files = [f.resolve() for f in (copy / "csrc").rglob("*") if f.suffix in (".h", ".cpp", ".cu")]
    direct = {f: {(f.parent / name).resolve() for name in INCLUDE.findall(f.read_text())}
              for f in files}
    reached, grew = {target}, True
    while grew:
        new = {f for f, inc in direct.items() if inc & reached} - reached
        reached |= new
        grew = bool(new)
    return {f for f in reached if f.suffix in (".cpp", ".cu")}


def _libraries() -> list[str]:
    """What a CPU build of the extension links: torch's libraries."""
    from torch.utils import cpp_extension
    return ([f"-L{p}" for p in cpp_extension.library_paths()]
            + [f"-l{lib}" for lib in ("c10", "torch", "torch_cpu", "torch_python")])


def rebuild(root: Path, copy: Path, path: str) -> None:
    """Compiles the copy's units that include `path` and links the copy's fgdkern._C."""
    variables, units = ninja_build(root)
    if any(rule != "compile" for _, rule, _ in units):
        raise RuntimeError("C++ mistakes are planted in CPU builds only (build.ninja has CUDA units)")
    stale = includers(copy, path)
    out_dir = copy / "build-mutated"
    out_dir.mkdir(exist_ok=True)
    objects, jobs = [], []
    for obj, _, src in units:
        src_copy = (copy / src.relative_to(root)).resolve()
        if src_copy not in stale:
            objects.append(str(obj))
            continue
        new_obj = out_dir / obj.name
        cmd = [variables["cxx"], *shlex.split(variables["cflags"]), str(src_copy),
               "-o", str(new_obj), *shlex.split(variables["post_cflags"])]
        jobs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))
        objects.append(str(new_obj))
    for job in jobs:
        log = job.communicate()[0]
        if job.returncode != 0:
            raise RuntimeError(f"the mutated C++ does not compile:\n{log[-3000:]}")
    (library,) = (copy / "fgdkern").glob("_C*.so")
    openmp = ["-fopenmp"] if "-fopenmp" in variables["post_cflags"] else []
    link = [variables["cxx"], "-shared", *objects, *_libraries(), *openmp,
            "-o", str(library)]
    run = subprocess.run(link, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"linking the mutated extension failed:\n{run.stderr[-3000:]}")


def restore(root: Path, copy: Path) -> None:
    """The copy's fgdkern._C as the working tree built it."""
    for library in (root / "fgdkern").glob("_C*.so"):
        shutil.copy2(library, copy / "fgdkern" / library.name)
