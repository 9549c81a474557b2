"""Build (once, cached) and locate the C++ plugin libraries in ``plugins/``.

The CMake project is configured and built on first use and rebuilt whenever a
file under ``plugins/`` changes; users never run cmake themselves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from export.errors import UserError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "plugins"
ORT_LIBRARY_NAME = "libfourierformer_ort.so"
CPU_LIBRARY_NAME = "libfourierformer_cpu.so"
CUDA_LIBRARY_NAME = "libfourierformer_cuda.so"
CUDA_EMULATOR_NAME = "libfourierformer_cuda_emulated.so"
TRT_PLUGIN_NAME = "libfourierformer_trt.so"
HARNESS_NAME = "fourier_attention_plugin_harness"
NO_CUDA = "no CUDA compiler was found when the plugins were built (install the CUDA toolkit or set CUDACXX, then " \
          "python -m export build-plugins --force)"
CMAKE_VARIABLES = ("ONNXRUNTIME_INCLUDE_DIR", "TENSORRT_INCLUDE_DIR", "FF_DEBIAN_MIRROR", "FF_CPU_ARCH_FLAGS",
                   "FF_CUDA_ARCHITECTURES")
"""Environment variables passed through to CMake when set (header locations and build flags)."""


def build_dir() -> Path:
    """Where the plugins are built: ``$FOURIERFORMER_BUILD_DIR`` or ``build/plugins`` in the repository."""
    return Path(os.environ.get("FOURIERFORMER_BUILD_DIR", REPO_ROOT / "build" / "plugins"))


def source_digest() -> str:
    """sha256 over the paths and contents of every file under ``plugins/``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE_DIR.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(SOURCE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _run(command: list[str], what: str) -> None:
    """Run a build command, logging its output; UserError with the output's tail on failure."""
    log.debug("$ %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    log.debug("%s", result.stdout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise UserError(f"{what} failed (exit {result.returncode}):\n{tail}")


def build_plugins(force: bool = False) -> Path:
    """Configure and build the CMake project if its sources changed; return the build directory."""
    if not (SOURCE_DIR / "CMakeLists.txt").is_file():
        raise UserError(f"plugin sources not found in {SOURCE_DIR}: install fourierformer-deploy from its repository")
    if shutil.which("cmake") is None:
        raise UserError("cmake is not on PATH: it is needed to build the plugin libraries")
    out = build_dir()
    stamp = out / "source.sha256"
    digest = source_digest()
    if not force and stamp.is_file() and stamp.read_text() == digest and (out / ORT_LIBRARY_NAME).is_file():
        return out
    log.info("building plugin libraries in %s (first use or sources changed)...", out)
    defines = [f"-D{name}={os.environ[name]}" for name in CMAKE_VARIABLES if os.environ.get(name)]
    _run(["cmake", "-S", str(SOURCE_DIR), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
          f"-DPython3_EXECUTABLE={sys.executable}", *defines], "cmake configure")
    _run(["cmake", "--build", str(out), "--parallel", str(os.cpu_count() or 1)], "cmake build")
    stamp.write_text(digest)
    log.info("built %s", out / ORT_LIBRARY_NAME)
    return out


def ort_library() -> Path:
    """Path to the ONNX Runtime custom-op library, built first if needed."""
    return build_plugins() / ORT_LIBRARY_NAME


def _built(name: str, missing: str) -> Path:
    """Path of a built artifact of the CMake project; UserError saying why it is missing."""
    path = build_plugins() / name
    if not path.is_file():
        raise UserError(f"{name} was not built: {missing}")
    return path


def cpu_library() -> Path:
    """The CPU kernel's shared library (plain C API, for ctypes)."""
    return _built(CPU_LIBRARY_NAME, "the CMake build skipped it (see python -m export build-plugins --force -v)")


def cuda_library() -> Path:
    """The CUDA kernel's shared library (plain C launcher API, for ctypes)."""
    return _built(CUDA_LIBRARY_NAME, NO_CUDA)


def cuda_emulator_library() -> Path:
    """The CUDA kernel compiled for the CPU with CUDA's built-ins emulated (plugins/cuda/emulator), for tests."""
    return _built(CUDA_EMULATOR_NAME, NO_CUDA)


def trt_plugin_library() -> Path:
    """The TensorRT plugin library (exports getCreators)."""
    return _built(TRT_PLUGIN_NAME, NO_CUDA)


def plugin_harness() -> Path:
    """The C++ harness that checks the TensorRT plugin without a TensorRT library."""
    return _built(HARNESS_NAME, NO_CUDA)
