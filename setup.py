"""Build script: the pure-Python package, plus the CUDA extension ``m4v._C`` when it can be built.

Environment:
  TORCH_CUDA_ARCH_LIST   GPU architectures to compile for (default "9.0"; e.g. "8.0;9.0").
  M4V_SKIP_CUDA_BUILD=1  never build the extension.
  M4V_FORCE_CUDA_BUILD=1 a failed or impossible extension build is an error.
  MAX_JOBS               parallel compile jobs (ninja); defaults to the CPU count.
"""

import glob
import os
import shutil
import sys
import time

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(message):
    print(f"m4v setup: {message}", file=sys.stderr, flush=True)


def _cuda_extension():
    """Returns (ext_modules, cmdclass), or None with the reason when the extension cannot be built."""
    if _flag("M4V_SKIP_CUDA_BUILD"):
        return None, "M4V_SKIP_CUDA_BUILD is set"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        return None, f"torch is not importable ({exc}); install torch first and use --no-build-isolation"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
        return None, "nvcc was not found (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)"

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True))
    # torch >= 2.14 headers demand C++20; torch 2.11 (the H100 image) accepts it too.
    cxx = ["-O3", "-std=c++20"]
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]

    class TimedBuildExtension(BuildExtension):
        def run(self):
            start = time.perf_counter()
            _say(f"building m4v._C for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
            try:
                super().run()
            except Exception as exc:  # the pure-Python package still works without the extension
                if _flag("M4V_FORCE_CUDA_BUILD"):
                    raise
                _say(f"CUDA extension build FAILED ({exc}); installing the pure-Python package only")
                return
            _say(f"built m4v._C in {time.perf_counter() - start:.1f} s")

    ext = CUDAExtension(
        name="m4v._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
    )
    return ([ext], {"build_ext": TimedBuildExtension.with_options(use_ninja=True)}), None


built, reason = _cuda_extension()
if built is None:
    if _flag("M4V_FORCE_CUDA_BUILD"):
        raise RuntimeError(f"M4V_FORCE_CUDA_BUILD is set but the CUDA extension cannot be built: {reason}")
    _say(f"not building the CUDA extension: {reason}. Installing the pure-Python package "
         "(Triton and PyTorch backends only).")
    ext_modules, cmdclass = [], {}
else:
    ext_modules, cmdclass = built

setup(
    packages=find_packages(include=["m4v", "m4v.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
