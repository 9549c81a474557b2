"""What the ctypes bindings of the CPU and CUDA kernels share: the C parameter block and the tensor checks.

The C side is plugins/common/fourier_attention.h; the Python bindings are :mod:`export.cpu_kernel` and
:mod:`export.cuda_kernel`.
"""

from __future__ import annotations

import ctypes

import torch

DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""torch dtype -> ff_dtype of fourier_attention.h."""


class Params(ctypes.Structure):
    """ff_params of plugins/common/fourier_attention.h."""

    _fields_ = [("batch", ctypes.c_int64), ("heads", ctypes.c_int64), ("nq", ctypes.c_int64),
                ("nk", ctypes.c_int64), ("dim", ctypes.c_int64), ("R", ctypes.c_float),
                ("power", ctypes.c_int32), ("eps", ctypes.c_float), ("causal", ctypes.c_int32)]


def params(q: torch.Tensor, k: torch.Tensor, R: float, power: int, eps: float, causal: bool) -> Params:
    """The C parameter block for q[B,H,Nq,D] and k[B,H,Nk,D]."""
    b, h, nq, d = q.shape
    return Params(b, h, nq, k.shape[2], d, R, power, eps, int(causal))


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
              dtypes: tuple[torch.dtype, ...] = tuple(DTYPES)) -> None:
    """ValueError naming the problem unless q[B,H,Nq,D], k/v[B,H,Nk,D] are of one dtype among ``dtypes``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or q.dtype not in dtypes or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"FourierAttention ({backend}): q, k, v must be rank-4 tensors of one dtype among "
                         f"{list(dtypes)}; got {q.dtype}/{k.dtype}/{v.dtype} of ranks {q.dim()}/{k.dim()}/{v.dim()}")
    if q.shape[:2] != k.shape[:2] or k.shape != v.shape or q.shape[3] != k.shape[3]:
        raise ValueError(f"FourierAttention ({backend}): shapes q{list(q.shape)} k{list(k.shape)} v{list(v.shape)} "
                         "disagree (need q[B,H,Nq,D], k and v [B,H,Nk,D])")
