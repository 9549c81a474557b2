"""The CPU kernel from Python: its plain C API (libfourierformer_cpu.so) called through ctypes.

The same kernel as the ONNX Runtime op, parallelized here over ``torch.get_num_threads()`` threads (the caller and
a pool; ctypes releases the GIL during each call): first every prepare item, then every output row.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from export import plugin_library
from export.kernel_api import DTYPES, Params, check_qkv, params
from fourierformer import opspec

ALIGNMENT = 64
"""FF_CPU_WORKSPACE_ALIGNMENT of plugins/cpu/fourier_attention_cpu.h."""


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded CPU kernel library with typed entry points (built first if needed)."""
    lib = ctypes.CDLL(str(plugin_library.cpu_library()))
    p, pointer, i64 = ctypes.POINTER(Params), ctypes.c_void_p, ctypes.c_int64
    lib.ff_validate_params.argtypes = [p]
    lib.ff_validate_params.restype = ctypes.c_char_p
    lib.ff_cpu_workspace_size.argtypes = [p]
    lib.ff_cpu_workspace_size.restype = ctypes.c_size_t
    for name in ("ff_cpu_prepare_items", "ff_cpu_rows"):
        getattr(lib, name).argtypes = [p]
        getattr(lib, name).restype = i64
    lib.ff_cpu_rows_per_task.argtypes = [p, ctypes.c_int]
    lib.ff_cpu_rows_per_task.restype = i64
    lib.ff_cpu_prepare.argtypes = [p, ctypes.c_int, pointer, pointer, pointer, pointer, i64, i64]
    lib.ff_cpu_prepare.restype = None
    lib.ff_cpu_compute.argtypes = [p, ctypes.c_int, pointer, pointer, i64, i64]
    lib.ff_cpu_compute.restype = None
    return lib


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="fourier-attention-cpu")


def _parallel(fn: Callable[[int, int], None], total: int, per_task: int, workers: int) -> None:
    """fn(begin, end) over [0, total) in ranges of ``per_task``: the calling thread and ``workers - 1`` pool threads
    take the ranges in turn (one pool task per thread, not per range: the per-range cost is one ctypes call).
    Returns when every range is done; re-raises an error of any thread after all have stopped."""
    ranges = [(b, min(b + per_task, total)) for b in range(0, total, per_task)]
    pending = iter(ranges)
    lock = threading.Lock()

    def take_ranges() -> None:
        while True:
            with lock:
                task = next(pending, None)
            if task is None:
                return
            fn(*task)

    helpers = [_pool(workers - 1).submit(take_ranges) for _ in range(min(workers, len(ranges)) - 1)]
    try:
        take_ranges()
    finally:
        for helper in helpers:  # the tensors behind fn stay alive until no thread uses them
            helper.result()


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
    workspace = torch.empty(lib.ff_cpu_workspace_size(pp) + ALIGNMENT, dtype=torch.uint8)
    ws = workspace.data_ptr() + (-workspace.data_ptr()) % ALIGNMENT
    dtype, workers = DTYPES[q.dtype], torch.get_num_threads()
    items = lib.ff_cpu_prepare_items(pp)
    _parallel(lambda b, e: lib.ff_cpu_prepare(pp, dtype, q.data_ptr(), k.data_ptr(), v.data_ptr(), ws, b, e),
              items, items // (4 * workers) + 1, workers)
    _parallel(lambda b, e: lib.ff_cpu_compute(pp, dtype, ws, out.data_ptr(), b, e),
              lib.ff_cpu_rows(pp), lib.ff_cpu_rows_per_task(pp, workers), workers)
    return out
