"""Build daunce_fast._C with CMake (see CMakeLists.txt).

Environment knobs (all optional):
  DAUNCE_FAST_CUDA=auto|1|0     compile csrc/cuda/*.cu when nvcc is found (auto, default),
                                require it (1), or never (0)
  DAUNCE_FAST_CUDA_ARCHS="80;90" CUDA architectures (CMake syntax), default sm_80 and sm_90
  DAUNCE_FAST_BUILD_TYPE=Release CMake build type
  DAUNCE_FAST_JOBS=N            parallel compile jobs (default: CPU count)
No network and no hardware probing: nvcc is looked up on PATH / CUDA_HOME only.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _cuda_mode() -> str:
    mode = os.environ.get("DAUNCE_FAST_CUDA", "auto").strip().lower()
    aliases = {"": "auto", "on": "1", "true": "1", "yes": "1", "off": "0", "false": "0", "no": "0"}
    mode = aliases.get(mode, mode)
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"DAUNCE_FAST_CUDA must be auto, 1 or 0, got {mode!r}")
    return mode


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        cmake = shutil.which("cmake")
        if cmake is None:
            raise SystemExit(
                "daunce_fast: cmake not found; `pip install cmake` or install it with your package manager"
            )
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("DAUNCE_FAST_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{cfg.upper()}={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DDAUNCE_FAST_CUDA={_cuda_mode()}",
        ]
        archs = os.environ.get("DAUNCE_FAST_CUDA_ARCHS")
        if archs:
            args.append(f"-DDAUNCE_FAST_CUDA_ARCHS={archs}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        jobs = os.environ.get("DAUNCE_FAST_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, str(ROOT), *args], cwd=build_temp, check=True)
        subprocess.run([cmake, "--build", ".", "--config", cfg, "-j", jobs], cwd=build_temp, check=True)


setup(ext_modules=[CMakeExtension("daunce_fast._C")], cmdclass={"build_ext": CMakeBuild})
