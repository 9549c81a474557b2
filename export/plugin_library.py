"""Locate the C++ plugin libraries, building them from source when needed.

A wheel ships the libraries built with it (``export/native/``). Any library it lacks (say, the CUDA ones when
the wheel was built without nvcc), and every library in a checkout, is built on first use from the plugin
sources into the per-user cache, in a folder keyed by the sources' hash and the toolchain (cmake, the C++ and
CUDA compilers, the header and flag variables), so users never run cmake themselves and a changed source or
compiler never reuses a stale build. ``$FOURIERFORMER_BUILD_DIR`` names one fixed build folder instead
(incremental builds while developing the kernels).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from export import paths
from export.errors import UserError

log = logging.getLogger(__name__)

ORT_LIBRARY_NAME = "libfourierformer_ort.so"
CPU_LIBRARY_NAME = "libfourierformer_cpu.so"
CUDA_LIBRARY_NAME = "libfourierformer_cuda.so"
CUDA_EMULATOR_NAME = "libfourierformer_cuda_emulated.so"
TRT_PLUGIN_NAME = "libfourierformer_trt.so"
HARNESS_NAME = "fourier_attention_plugin_harness"
NO_CUDA = "no CUDA compiler was found when the plugins were built (install the CUDA toolkit or set CUDACXX, then " \
          "fourierformer-deploy build-plugins --force)"
CMAKE_VARIABLES = ("ONNXRUNTIME_INCLUDE_DIR", "TENSORRT_INCLUDE_DIR", "FF_DEBIAN_MIRROR", "FF_CUDA_ARCHITECTURES")
"""Environment variables passed through to CMake when set (header locations and build flags)."""
STAMP = "source.sha256"
"""Written into a build folder once its build succeeded: the digest of the sources it was built from."""
KEEP_BUILDS = 3
"""Cached builds kept (the most recent); older ones are removed after a build."""


def source_digest() -> str:
    """sha256 over the paths and contents of every file of the plugin sources."""
    sources = paths.plugin_sources()
    digest = hashlib.sha256()
    for path in sorted(p for p in sources.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(sources)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version_of(tool: str | None) -> str:
    """``tool --version`` (the toolchain part of the cache key), or ``missing``."""
    if not tool:
        return "missing"
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "missing"


def _nvcc() -> str | None:
    """The CUDA compiler CMake will find (CUDACXX, nvcc on PATH, or /usr/local/cuda/bin/nvcc)."""
    default = Path("/usr/local/cuda/bin/nvcc")
    return os.environ.get("CUDACXX") or shutil.which("nvcc") or (str(default) if default.is_file() else None)


@lru_cache(maxsize=None)
def toolchain() -> str:
    """What besides the sources decides the build: tool versions and the variables passed to CMake."""
    tools = {"cmake": shutil.which("cmake"), "c++": os.environ.get("CXX") or shutil.which("c++"), "nvcc": _nvcc()}
    lines = [f"{name}: {_version_of(tool)}" for name, tool in tools.items()]
    lines += [f"{name}={os.environ.get(name, '')}" for name in CMAKE_VARIABLES]
    return "\n".join(lines)


def build_dir() -> Path:
    """``$FOURIERFORMER_BUILD_DIR``, else the cache folder keyed by the sources and the toolchain."""
    if os.environ.get("FOURIERFORMER_BUILD_DIR"):
        return Path(os.environ["FOURIERFORMER_BUILD_DIR"])
    key = hashlib.sha256(f"{source_digest()}\n{toolchain()}".encode()).hexdigest()[:16]
    return paths.cache_dir() / "plugins" / key


def _run(command: list[str], what: str) -> None:
    """Run a build command, logging its output; UserError with the output's tail on failure."""
    log.debug("$ %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    log.debug("%s", result.stdout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise UserError(f"{what} failed (exit {result.returncode}):\n{tail}")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if needed): one build at a time per folder."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / ".lock", "w")
    except OSError as exc:
        raise UserError(f"cannot create the plugin build folder {directory}: {exc.strerror or exc}") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building the plugins in %s...", directory)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _in_use(directory: Path) -> bool:
    """Whether another process holds ``directory``'s build lock."""
    try:
        with open(directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _prune(current: Path) -> None:
    """Keep the KEEP_BUILDS most recent cached builds (``current`` among them); skip builds in progress."""
    others = [d for d in current.parent.iterdir() if d.is_dir() and d != current and not _in_use(d)]
    others.sort(key=lambda d: (d / STAMP).stat().st_mtime if (d / STAMP).is_file() else 0, reverse=True)
    for old in others[KEEP_BUILDS - 1:]:
        log.debug("removing the old plugin build %s", old)
        shutil.rmtree(old, ignore_errors=True)


def build_plugins(force: bool = False) -> Path:
    """Configure and build the plugin CMake project unless an up-to-date build exists; the build folder."""
    sources = paths.plugin_sources()
    if not (sources / "CMakeLists.txt").is_file():
        raise UserError(f"plugin sources not found in {sources}: reinstall fourierformer-deploy")
    if shutil.which("cmake") is None:
        raise UserError("cmake is not on PATH: it is needed to build the plugin libraries")
    out = build_dir()
    digest = source_digest()
    with _locked(out):
        stamp = out / STAMP
        if not force and stamp.is_file() and stamp.read_text() == digest and (out / ORT_LIBRARY_NAME).is_file():
            return out
        log.info("building the plugin libraries in %s (first use, or sources or toolchain changed)...", out)
        stamp.unlink(missing_ok=True)
        defines = [f"-D{name}={os.environ[name]}" for name in CMAKE_VARIABLES if os.environ.get(name)]
        _run(["cmake", "-S", str(sources), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
              f"-DPython3_EXECUTABLE={sys.executable}", *defines], "cmake configure")
        _run(["cmake", "--build", str(out), "--parallel", str(os.cpu_count() or 1)], "cmake build")
        stamp.write_text(digest)
    log.info("built %s", out / ORT_LIBRARY_NAME)
    if not os.environ.get("FOURIERFORMER_BUILD_DIR"):
        _prune(out)
    return out


def _library(name: str, missing: str) -> Path:
    """A library shipped with the package, else built from source; UserError saying why it is missing."""
    shipped = paths.NATIVE_DIR / name
    if shipped.is_file() and not os.environ.get("FOURIERFORMER_BUILD_DIR"):
        return shipped
    path = build_plugins() / name
    if not path.is_file():
        raise UserError(f"{name} was not built: {missing}")
    return path


def ort_library() -> Path:
    """The ONNX Runtime custom-op library."""
    return _library(ORT_LIBRARY_NAME, "the CMake build skipped it (see fourierformer-deploy build-plugins --force -v)")


def cpu_library() -> Path:
    """The CPU kernel's shared library (plain C API, for ctypes)."""
    return _library(CPU_LIBRARY_NAME, "the CMake build skipped it (see fourierformer-deploy build-plugins --force -v)")


def cuda_library() -> Path:
    """The CUDA kernel's shared library (plain C launcher API, for ctypes)."""
    return _library(CUDA_LIBRARY_NAME, NO_CUDA)


def cuda_emulator_library() -> Path:
    """The CUDA kernel compiled for the CPU with CUDA's built-ins emulated (plugins/cuda/emulator), for tests."""
    return _library(CUDA_EMULATOR_NAME, NO_CUDA)


def trt_plugin_library() -> Path:
    """The TensorRT plugin library (exports getCreators and setLoggerFinder)."""
    return _library(TRT_PLUGIN_NAME, NO_CUDA)


def plugin_harness() -> Path:
    """The C++ harness that checks the TensorRT plugin without a TensorRT library."""
    return _library(HARNESS_NAME, NO_CUDA)
