"""The build of fgdkern's C++/CUDA extension ``fgdkern._C``.

Everything else (name, version, dependencies, packages) is in pyproject.toml;
this file holds only what needs code: the extension.

torch is imported only when the extension is really compiled, inside the
``build_ext`` command below, never at module level. Until then setuptools
sees a plain ``Extension`` that lists the C++ sources, so making an sdist
(``python -m build --sdist --no-isolation``, ``python setup.py sdist``) and
reading the metadata need no torch. When ``build_ext`` runs, it imports
torch, fills that extension in with what ``torch.utils.cpp_extension`` adds
(include and library paths, CUDA sources and flags) and hands its own state
to torch's ``BuildExtension``, which compiles it (with ninja when installed).

What is built:
- the CPU kernels, every ``csrc/*.cpp`` and ``csrc/cpu/*.cpp``, always;
- the CUDA kernels, every ``csrc/cuda/*.cu``, when torch sees a GPU and a
  CUDA toolkit is found, or when ``FORCE_CUDA=1`` (and a toolkit is found);
- nothing when ``FGDKERN_NO_EXT=1``: the package then runs on its
  pure-PyTorch paths (and warns once at import).
"""
import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

EXT_NAME = "fgdkern._C"


def cpu_sources() -> list:
    return sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))


def cuda_sources() -> list:
    return sorted(glob.glob("csrc/cuda/*.cu"))


def headers() -> list:
    return sorted(glob.glob("csrc/**/*.h", recursive=True)
                  + glob.glob("csrc/**/*.cuh", recursive=True))


def torch_extension():
    """The extension as torch.utils.cpp_extension makes it (imports torch)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = cpu_sources()
    force = os.environ.get("FORCE_CUDA") == "1"
    with_cuda = CUDA_HOME is not None and (force or torch.cuda.is_available())
    # The C++ standard is the one torch.utils.cpp_extension picks for this torch.
    # OpenMP: at::parallel_for is inline, so without it the kernels run on one thread.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", *openmp]
    if with_cuda:
        sources += cuda_sources()
        ext = CUDAExtension(EXT_NAME, sources, define_macros=[("WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
                            extra_link_args=openmp, depends=headers())
    else:
        ext = CppExtension(EXT_NAME, sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=openmp, depends=headers())
    print(f"fgdkern: building {EXT_NAME} with_cuda={with_cuda} openmp={bool(openmp)} "
          f"(CUDA_HOME={CUDA_HOME}, torch {torch.__version__}, {len(sources)} sources)")
    return ext


class build_ext(_build_ext):
    """setuptools' build_ext until it runs; then torch's BuildExtension compiles fgdkern._C."""

    def run(self):
        try:
            from torch.utils.cpp_extension import BuildExtension
        except ImportError as exc:
            raise RuntimeError(
                "fgdkern: building the extension fgdkern._C needs torch in the build "
                "environment. Install torch first, then `pip install --no-build-isolation "
                "<fgdkern source or sdist>`; or set FGDKERN_NO_EXT=1 to install the "
                "pure-PyTorch package without the extension.") from exc
        (ext,) = self.extensions
        # torch's extension into the object setuptools finalized (which keeps its notes).
        vars(ext).update(vars(torch_extension()))
        torch_cmd = BuildExtension(self.distribution, use_ninja=True)
        # The same command, finalized as this one was (inplace, build_lib, editable
        # mode, ...): only torch's own settings stay its own.
        own = {"use_ninja", "no_python_abi_suffix"}
        vars(torch_cmd).update({k: v for k, v in vars(self).items() if k not in own})
        if torch_cmd.use_ninja:  # ninja tracks what is stale (headers included)
            torch_cmd.force = True
        torch_cmd.run()


def ext_modules() -> list:
    if os.environ.get("FGDKERN_NO_EXT") == "1":
        print("fgdkern: FGDKERN_NO_EXT=1, building no extension")
        return []
    # Filled in by torch_extension() when build_ext runs; listed here so that
    # setuptools knows the package has an extension and which sources it has.
    return [Extension(EXT_NAME, cpu_sources(), depends=headers())]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": build_ext})
