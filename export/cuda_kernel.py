"""The CUDA kernel from Python: its plain C launcher (libfourierformer_cuda.so) called through ctypes.

The library is built with the other plugins (:func:`export.plugin_library.cuda_library`), or taken from
``$FOURIERFORMER_CUDA_LIBRARY`` when set (a prebuilt ``libfourierformer_cuda.so``, e.g. from scripts/gpu_checks.sh).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from export import plugin_library
from export.errors import UserError
from export.kernel_api import DTYPES, Params, check_qkv, params
from fourierformer import opspec


class Strides(ctypes.Structure):
    """ff_strides of plugins/cuda/fourier_attention_cuda.h (elements; the last dim is contiguous)."""

    _fields_ = [("batch", ctypes.c_int64), ("head", ctypes.c_int64), ("row", ctypes.c_int64)]


LIBRARY_ENV = "FOURIERFORMER_CUDA_LIBRARY"
"""Environment variable naming a prebuilt libfourierformer_cuda.so (skips the CMake build)."""


def library_path() -> Path:
    """``$FOURIERFORMER_CUDA_LIBRARY`` if set, else the library built with the plugins (UserError if not built)."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise UserError(f"{LIBRARY_ENV}={override} is not a file")
        return path
    return plugin_library.cuda_library()


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded kernel library with typed entry points (loading it needs no GPU)."""
    lib = ctypes.CDLL(str(library_path()))
    lib.ff_cuda_workspace_size.argtypes = [ctypes.POINTER(Params)]
    lib.ff_cuda_workspace_size.restype = ctypes.c_size_t
    pointer = ctypes.c_void_p
    lib.ff_cuda_forward.argtypes = [ctypes.POINTER(Params), ctypes.c_int, pointer, ctypes.POINTER(Strides), pointer,
                                    ctypes.POINTER(Strides), pointer, ctypes.POINTER(Strides), pointer,
                                    ctypes.POINTER(Strides), pointer, ctypes.c_size_t, pointer]
    lib.ff_cuda_forward.restype = ctypes.c_char_p
    return lib


def strides(t: torch.Tensor) -> Strides:
    """The C stride block of a [B,H,N,D] tensor (ValueError unless its last dimension is contiguous)."""
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError("FourierAttention (CUDA): the last dimension of q, k, v must be contiguous")
    return Strides(*t.stride()[:3])


def fourier_attention_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: float = opspec.R.default,
                           power: int = opspec.POWER.default, eps: float = opspec.EPS.default,
                           causal: bool = False) -> torch.Tensor:
    """FourierAttention on CUDA tensors q[B,H,Nq,D], k/v[B,H,Nk,D] (float32/float16/bfloat16, one dtype).

    Any strides with a contiguous last dim; returns a contiguous tensor of q's dtype, enqueued on the current
    stream. Raises ValueError for bad tensors, RuntimeError with the C message for bad attributes (e.g. odd
    power, D > opspec.CUDA_MAX_DIM) or a CUDA launch error.
    """
    if not (q.is_cuda and k.is_cuda and v.is_cuda) or not q.device == k.device == v.device:
        raise ValueError("FourierAttention (CUDA): q, k and v must be CUDA tensors on one device")
    check_qkv(q, k, v, "CUDA")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    p = params(q, k, R, power, eps, causal)
    blocks = [ctypes.byref(strides(t)) for t in (q, k, v, out)]
    lib = library()
    with torch.cuda.device(q.device):  # the launch goes to the current device
        workspace = torch.empty(lib.ff_cuda_workspace_size(ctypes.byref(p)), dtype=torch.uint8, device=q.device)
        error = lib.ff_cuda_forward(ctypes.byref(p), DTYPES[q.dtype], q.data_ptr(), blocks[0], k.data_ptr(),
                                    blocks[1], v.data_ptr(), blocks[2], out.data_ptr(), blocks[3],
                                    workspace.data_ptr(), workspace.numel(),
                                    torch.cuda.current_stream(q.device).cuda_stream)
    if error is not None:
        raise RuntimeError(f"ff_cuda_forward: {error.decode()}")
    return out


def available() -> str | None:
    """None if the CUDA kernel can run here, else what is missing."""
    if not torch.cuda.is_available():
        why = (f"this torch {torch.__version__} is a CPU build" if torch.version.cuda is None else
               f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but finds no usable device/driver")
        return f"needs an NVIDIA GPU: torch.cuda.is_available() is False ({why})"
    try:
        library()
    except UserError as exc:
        return str(exc)
    return None
