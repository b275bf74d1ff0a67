"""Build of ptycho_fast and its compiled ops (ptycho_fast._C).

CPU sources are always built. The CUDA sources (csrc/cuda/*.cu) are added when torch is a
CUDA build and nvcc is found, or when FORCE_CUDA=1; TORCH_CUDA_ARCH_LIST then defaults
to Ampere + Hopper (no GPU is needed to compile). Build after torch is installed:
    pip install -e . --no-build-isolation
"""

import glob
import os
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0"


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("PTYCHO_FAST_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and (
        cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    )


def extensions():
    debug = os.environ.get("PTYCHO_FAST_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # torch's CPU parallel backend here is OpenMP: without -fopenmp at::parallel_for
    # silently runs on one thread.
    openmp = "OpenMP" in torch.__config__.parallel_info()
    cxx = ["-std=c++20", *opt] + (["-fopenmp"] if openmp else [])
    link = ["-fopenmp"] if openmp else []
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not want_cuda():
        return [cpp_extension.CppExtension(
            "ptycho_fast._C", sources, extra_compile_args={"cxx": cxx},
            extra_link_args=link, py_limited_api=False)]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-std=c++20", "-lineinfo"]
    return [cpp_extension.CUDAExtension(
        "ptycho_fast._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]


setup(
    packages=find_packages(include=["ptycho_fast", "ptycho_fast.*"]),
    # The bundled sample (ptycho-fast infer with no arguments) ships with the package.
    package_data={"ptycho_fast": ["sample/*.npz", "sample/*.json", "sample/model/*"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
