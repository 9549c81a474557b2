"""The CPU kernel from Python: its plain C API (libfourierformer_cpu.so) called through ctypes.

The same kernel as the ONNX Runtime op, run over ``torch.get_num_threads()`` threads by the library's own pool (one
ctypes call, which releases the GIL). The library picks its instruction-set path at load from CPUID, or from the
environment variable ``FF_CPU_ISA`` (auto, avx512, avx2, baseline): ``isa()`` names the one in use.
"""

from __future__ import annotations

import contextlib
import os
import ctypes
import functools
from collections.abc import Iterator

import torch

from export import plugin_library
from export.errors import UserError
from export.kernel_api import DTYPES, Params, check_qkv, params
from fourierformer import opspec

ALIGNMENT = 64
"""FF_CPU_WORKSPACE_ALIGNMENT of plugins/cpu/fourier_attention_cpu.h."""

ISAS = ("avx512", "avx2", "baseline")
"""The kernel's instruction-set paths, widest first (plugins/cpu/fourier_attention_cpu.h)."""


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded CPU kernel library with typed entry points (built first if needed)."""
    lib = ctypes.CDLL(str(plugin_library.cpu_library()))
    p, pointer = ctypes.POINTER(Params), ctypes.c_void_p
    lib.ff_validate_params.argtypes = [p]
    lib.ff_validate_params.restype = ctypes.c_char_p
    lib.ff_cpu_workspace_size.argtypes = [p]
    lib.ff_cpu_workspace_size.restype = ctypes.c_size_t
    lib.ff_cpu_forward_threads.argtypes = [p, ctypes.c_int, pointer, pointer, pointer, pointer, pointer, ctypes.c_int]
    lib.ff_cpu_forward_threads.restype = ctypes.c_char_p
    for name in ("ff_cpu_prepare_items", "ff_cpu_rows"):
        getattr(lib, name).argtypes = [p]
        getattr(lib, name).restype = ctypes.c_int64
    lib.ff_cpu_prepare.argtypes = [p, ctypes.c_int, pointer, pointer, pointer, pointer, ctypes.c_int64, ctypes.c_int64]
    lib.ff_cpu_prepare.restype = None
    lib.ff_cpu_compute.argtypes = [p, ctypes.c_int, pointer, pointer, ctypes.c_int64, ctypes.c_int64]
    lib.ff_cpu_compute.restype = None
    for name in ("ff_cpu_isa", "ff_cpu_isa_error"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = ctypes.c_char_p
    for name in ("ff_cpu_isa_unsupported", "ff_cpu_set_isa"):
        getattr(lib, name).argtypes = [ctypes.c_char_p]
        getattr(lib, name).restype = ctypes.c_char_p
    return lib


def isa() -> str:
    """The instruction-set path the CPU kernel runs (avx512, avx2 or baseline).

    Raises UserError where ``FF_CPU_ISA`` names an unknown path or one this CPU cannot run."""
    lib = library()
    if (error := lib.ff_cpu_isa_error()) is not None:
        raise UserError(f"{error.decode()}; got FF_CPU_ISA={os.environ.get('FF_CPU_ISA', '')!r}")
    return lib.ff_cpu_isa().decode()


def isa_unsupported(name: str) -> str | None:
    """None if path ``name`` can run on this CPU (and OS), else why not."""
    reason = library().ff_cpu_isa_unsupported(name.encode())
    return None if reason is None else reason.decode()


def runnable_isas() -> list[str]:
    """The paths this CPU (and OS) can run, widest first."""
    return [name for name in ISAS if isa_unsupported(name) is None]


@contextlib.contextmanager
def forced_isa(name: str) -> Iterator[None]:
    """Runs the kernel on path ``name`` inside the block (tests and benchmarks; process-wide), then restores it."""
    lib = library()
    before = lib.ff_cpu_isa()
    if (error := lib.ff_cpu_set_isa(name.encode())) is not None:
        raise ValueError(error.decode())
    try:
        yield
    finally:
        lib.ff_cpu_set_isa(before)


def aligned_workspace(p: Params) -> tuple[torch.Tensor, int]:
    """The kernel's workspace for ``p``: the buffer that owns it (keep it alive) and its aligned address."""
    buffer = torch.empty(library().ff_cpu_workspace_size(ctypes.byref(p)) + ALIGNMENT, dtype=torch.uint8)
    return buffer, buffer.data_ptr() + (-buffer.data_ptr()) % ALIGNMENT


def fourier_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: float = opspec.R.default,
                          power: int = opspec.POWER.default, eps: float = opspec.EPS.default,
                          causal: bool = False) -> torch.Tensor:
    """FourierAttention on CPU tensors q[B,H,Nq,D], k/v[B,H,Nk,D] (float32 or float16, one dtype).

    Returns a contiguous tensor of q's dtype. Raises ValueError for bad tensors or attributes (the C message).
    """
    if q.device.type != "cpu" or k.device.type != "cpu" or v.device.type != "cpu":
        raise ValueError("FourierAttention (CPU): q, k and v must be CPU tensors")
    check_qkv(q, k, v, "CPU", (torch.float32, torch.float16))
    q, k, v = (t.contiguous() for t in (q, k, v))
    lib = library()
    p = params(q, k, R, power, eps, causal)
    pp = ctypes.byref(p)
    if (error := lib.ff_validate_params(pp)) is not None:
        raise ValueError(error.decode())
    out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    workspace, ws = aligned_workspace(p)
    error = lib.ff_cpu_forward_threads(pp, DTYPES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                       ws, torch.get_num_threads())
    if error is not None:
        raise ValueError(error.decode())
    return out
