"""Build fgdkern and its C++/CUDA extension ``fgdkern._C``.

The CPU kernels (every ``csrc/*.cpp`` and ``csrc/cpu/*.cpp``) are always built.
The CUDA kernels (``csrc/cuda/*.cu``) are built when torch sees a GPU and a
CUDA toolkit is found, or when ``FORCE_CUDA=1``; ``FGDKERN_NO_EXT=1`` skips the
extension entirely (the package then runs on its pure-PyTorch paths).
"""
import glob
import os
import sys

from setuptools import find_packages, setup


def _ext_modules():
    if os.environ.get("FGDKERN_NO_EXT") == "1":
        print("fgdkern: FGDKERN_NO_EXT=1, building no extension")
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    force = os.environ.get("FORCE_CUDA") == "1"
    with_cuda = CUDA_HOME is not None and (force or torch.cuda.is_available())
    # The C++ standard is the one torch.utils.cpp_extension picks for this torch.
    # OpenMP: at::parallel_for is inline, so without it the kernels run on one thread.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", *openmp]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension(
            "fgdkern._C", sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension("fgdkern._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=openmp)
    print(f"fgdkern: building fgdkern._C with_cuda={with_cuda} openmp={bool(openmp)} "
          f"(CUDA_HOME={CUDA_HOME}, torch {torch.__version__}, {len(sources)} sources)")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()

setup(
    name="fgdkern",
    version="0.1.0",
    description="Exact fused kernels for detector knowledge-distillation losses (FGD, FKD, PFI, RM)",
    packages=find_packages(include=["fgdkern", "fgdkern.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton>=3.0"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
