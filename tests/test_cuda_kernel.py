"""The CUDA kernel (plugins/cuda): library checks that run anywhere; parity with the float64 oracle on its CPU
emulation (plugins/cuda/emulator: the same kernel source, every thread and barrier emulated) and on a GPU.

Without a GPU the GPU cases skip with the reason; the library is still built (for every target architecture),
its C API is checked where that needs no device (exports, workspace query, validation), and the emulator runs
every parity case, also checking that the result does not depend on the order of the threads (races).
``$FOURIERFORMER_CUDA_LIBRARY`` selects a prebuilt library (scripts/gpu_checks.sh sets it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import subprocess

import pytest
import torch
from conftest import attention_inputs, rounded_parity_error

from export import cuda_kernel, plugin_library
from export.errors import UserError
from export.kernel_api import DTYPES, Params, params

MISSING = cuda_kernel.available()
needs_gpu = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
"""Normwise error bound vs the float64 oracle of the (rounded) inputs."""
EPS = 1e-6
SHAPES = [  # (B, H, Nq, Nk, D): N=1/D=1, D=3, Nq != Nk both ways, ragged tiles (64) and chunks (16), all D buckets
    (1, 1, 1, 1, 1), (2, 3, 5, 9, 3), (1, 2, 37, 53, 17), (1, 1, 70, 66, 33), (2, 2, 64, 64, 64),
    (1, 1, 130, 70, 100), (1, 2, 40, 33, 128), (1, 1, 20, 150, 256), (1, 1, 65, 129, 1), (2, 1, 200, 190, 64),
]
R_POWER = [(R, power) for R in (0.1, 1.0, 10.0) for power in (2, 4, 8)]


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    """The loaded libfourierformer_cuda.so; skips (with the reason) where it could not be built."""
    try:
        return cuda_kernel.library()
    except UserError as exc:
        pytest.skip(f"libfourierformer_cuda.so is not available: {exc}")


def _params(dim=64, power=4, R=1.0, eps=EPS, causal=0, b=1, h=1, nq=4, nk=4) -> Params:
    return Params(b, h, nq, nk, dim, R, power, eps, causal)


def _forward(lib, p, dtype=0, pointer=None, workspace=None, workspace_bytes=None) -> str | None:
    """ff_cuda_forward with contiguous strides and the given (possibly fake) device pointer for every tensor and,
    unless given, for the workspace, of the size the library asks for."""
    if workspace_bytes is None:
        workspace_bytes = lib.ff_cuda_workspace_size(ctypes.byref(p))
    err = lib.ff_cuda_forward(ctypes.byref(p), dtype, pointer, None, pointer, None, pointer, None, pointer, None,
                              pointer if workspace is None else workspace, workspace_bytes, None)
    return None if err is None else err.decode()


# ---- checks that need no GPU ---------------------------------------------------------------------

def test_library_exports_only_the_launcher(lib):
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(cuda_kernel.library_path())],
                             capture_output=True, text=True, check=True).stdout.split()
    names = sorted(s for s in symbols if not re.fullmatch(r"[0-9a-fA-F]+|[A-Za-z]", s))
    assert names == ["ff_cuda_forward", "ff_cuda_workspace_size"]


def test_library_holds_code_for_every_target_architecture(lib):
    """The fat binary names each architecture it carries code for (sm_80, 86, 89, 90, 120 by default)."""
    wanted = os.environ.get("FF_CUDA_ARCHITECTURES", "80;86;89;90;120")
    expected = {m.encode() for m in re.findall(r"(\d+)", wanted)}
    archs = set(re.findall(rb"sm_(\d+)", cuda_kernel.library_path().read_bytes()))
    assert archs >= expected


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@pytest.mark.parametrize("b, h, nq, nk, dim",
                         [(2, 3, 5, 7, 64), (1, 1, 1, 0, 1), (1, 2, 65, 200, 17), (3, 1, 64, 1, 256)])
def test_workspace_query_needs_no_gpu(lib, b, h, nq, nk, dim):
    """The workspace holds the sin/cos table: 3 floats per (row, dim) of q and k, rows padded to 64, dims to 16."""
    expected = 12 * b * h * (_round_up(nq, 64) + _round_up(nk, 64)) * _round_up(dim, 16)
    assert lib.ff_cuda_workspace_size(ctypes.byref(_params(b=b, h=h, nq=nq, nk=nk, dim=dim))) == expected


def test_workspace_query_for_empty_invalid_and_huge_problems(lib):
    """Nothing to compute or invalid parameters: 0 (the launch reports the problem); sizes of 2^62 bytes or more:
    SIZE_MAX, which no allocation satisfies."""
    def size(**kw) -> int:
        return lib.ff_cuda_workspace_size(ctypes.byref(_params(**kw)))

    assert size(b=0) == 0 and size(nq=0) == 0 and size(dim=300) == 0 and size(power=3) == 0
    assert size(b=2**40, h=2**10, nq=1, nk=1, dim=1) == 2**64 - 1  # valid sizes (10^16 elements), 3 * 2^63 bytes of table


def test_missing_small_or_misaligned_workspace_is_reported(lib):
    p = _params(b=2, nq=70)
    needed = lib.ff_cuda_workspace_size(ctypes.byref(p))
    assert "workspace is NULL or smaller" in _forward(lib, p, pointer=0x1000, workspace=0, workspace_bytes=needed)
    assert "workspace is NULL or smaller" in _forward(lib, p, pointer=0x1000, workspace_bytes=needed - 1)
    assert "16-byte aligned" in _forward(lib, p, pointer=0x1000, workspace=0x1008)


@pytest.mark.parametrize("params, message", [
    (_params(dim=300), "dim must be in 1..256"),
    (_params(dim=0), "dim must be in 1..256"),
    (_params(power=3), "power must be an even integer"),
    (_params(power=66), "power must be an even integer"),
    (_params(R=0.0), "R must be finite and > 0"),
    (_params(R=float("inf")), "R must be finite and > 0"),
    (_params(eps=0.0), "eps must be finite and > 0"),
    (_params(causal=2), "causal must be 0 or 1"),
    (_params(nq=-1), "must be >= 0"),
], ids=["dim300", "dim0", "power3", "power66", "R0", "Rinf", "eps0", "causal2", "negative"])
def test_bad_parameters_are_reported_before_any_cuda_call(lib, params, message):
    """Validation runs before the launch: the message comes back even without a GPU (no pointer is touched)."""
    assert message in (_forward(lib, params) or "")


def test_bad_dtype_and_null_pointers(lib):
    assert "dtype must be" in _forward(lib, _params(), dtype=7)
    assert "null tensor pointer" in _forward(lib, _params())


def test_empty_problems_launch_nothing(lib):
    """batch*heads == 0 or nq == 0: nothing to compute, success without touching the device or the pointers."""
    assert _forward(lib, _params(b=0)) is None
    assert _forward(lib, _params(nq=0)) is None


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver (libcuda) is installed: a launch with fake pointers would run")
def test_without_a_driver_the_launch_error_is_returned(lib):
    """No driver: ff_cuda_forward returns the CUDA runtime's message instead of crashing."""
    err = _forward(lib, _params(), pointer=0x1000)
    assert err and "FourierAttention" not in err  # cudaGetErrorString's text, e.g. "CUDA driver version is insufficient..."


def test_wrapper_rejects_host_tensors():
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="must be CUDA tensors"):
        cuda_kernel.fourier_attention_cuda(q, q, q, 1.0)


# ---- parity: on the CPU emulation of the kernel (always), on a GPU (when there is one) ----------------

@functools.cache
def _emulator() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(plugin_library.cuda_emulator_library()))
    lib.ff_cuda_emulated_forward.restype = ctypes.c_char_p
    return lib


def emulated(q, k, v, R, power, eps, causal, order=0, seed=0) -> torch.Tensor:
    """The kernel run on the CPU by plugins/cuda/emulator (threads in ``order``: 0 forward, 1 reverse, 2 shuffled)."""
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    p = params(q, k, R, power, eps, causal)
    args = [a for t in (q, k, v, out) for a in (ctypes.c_void_p(t.data_ptr()), ctypes.byref(cuda_kernel.strides(t)))]
    err = _emulator().ff_cuda_emulated_forward(ctypes.byref(p), DTYPES[q.dtype], *args, order, seed)
    if err is not None:
        raise RuntimeError(err.decode())
    return out


def _kernel(where: str):
    """The kernel on the GPU or on its CPU emulation (skips, naming what is missing)."""
    if where == "gpu":
        if MISSING:
            pytest.skip(MISSING)
        return lambda q, k, v, *attrs: cuda_kernel.fourier_attention_cuda(q.cuda(), k.cuda(), v.cuda(), *attrs)
    try:
        _emulator()
    except UserError as exc:
        pytest.skip(f"the CUDA emulator library is not available: {exc}")
    return emulated


@pytest.fixture(params=["emulator", "gpu"])
def kernel(request):
    return _kernel(request.param)


def _run(kernel, shape, R, power, causal, dtype, shift=0.0, layout="contiguous"):
    """Normwise error of the kernel vs the float64 oracle of the inputs rounded to ``dtype``, in ``layout``."""
    def run(q, k, v):
        if layout == "bnhd":  # [B,N,H,D] storage viewed as [B,H,N,D]: non-contiguous, last dim contiguous
            q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        elif layout == "padded":  # rows of a wider buffer: row stride > D
            q, k, v = (torch.nn.functional.pad(t, (0, 5))[..., :t.shape[-1]] for t in (q, k, v))
        if layout != "contiguous":
            assert not q.is_contiguous() or q.shape[1] == 1 or q.shape[-1] == 1
        return kernel(q, k, v, R, power, EPS, bool(causal))
    return rounded_parity_error(run, shape, R, power, causal, dtype, EPS, shift)


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("R, power", R_POWER, ids=lambda x: str(x))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_parity_with_float64_oracle(kernel, shape, R, power, causal):
    assert _run(kernel, shape, R, power, causal, torch.float32) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("R, power", [(0.1, 2), (1.0, 4), (10.0, 8)], ids=lambda x: str(x))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_half_precision_parity_with_float64_oracle(kernel, shape, R, power, causal, dtype):
    assert _run(kernel, shape, R, power, causal, dtype) <= TOLERANCE[dtype]


@pytest.mark.parametrize("R", [0.1, 1.0, 10.0, 1e-30, 1e30])
def test_large_offset_cancellation_and_extreme_R(kernel, R):
    """q and k share an offset of 5: R*q is large while R*(q-k) is not (angle-difference worst case); at
    R = 1e-30 and 1e30 R cannot be folded into the inputs by a power of two (the no-fold kernel instances)."""
    assert _run(kernel, (2, 2, 40, 50, 24), R, 4, 0, torch.float32, shift=5.0 if R <= 10 else 5.0 / R) <= 1e-5


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("layout", ["bnhd", "padded"])
@pytest.mark.parametrize("causal", [0, 1])
def test_strided_inputs(kernel, layout, causal, dtype):
    assert _run(kernel, (2, 3, 70, 45, 40), 1.0, 4, causal, dtype, layout=layout) <= TOLERANCE[dtype]


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_emulated_threads_in_any_order_give_the_same_bits(shape):
    """Between barriers the emulator runs the threads forward, reversed or shuffled: a missing __syncthreads (a
    thread reading shared memory another writes in the same phase) would change the result."""
    run = _kernel("emulator")
    x = [torch.from_numpy(t) for t in attention_inputs(*shape, R=1.0, seed=3).values()]
    for causal in (False, True):
        expected = run(*x, 1.0, 4, EPS, causal, 0)
        for order, seed in ((1, 0), (2, 1), (2, 2)):
            assert torch.equal(run(*x, 1.0, 4, EPS, causal, order, seed), expected), (causal, order, seed)


@needs_gpu
def test_no_keys_gives_zeros_and_no_queries_gives_empty():
    q = torch.randn(2, 3, 5, 16, device="cuda")
    empty = torch.zeros(2, 3, 0, 16, device="cuda")
    out = cuda_kernel.fourier_attention_cuda(q, empty, empty, 1.0)
    torch.cuda.synchronize()
    assert out.shape == q.shape and not out.any()
    assert cuda_kernel.fourier_attention_cuda(empty, q, q, 1.0).shape == empty.shape


@needs_gpu
def test_runs_on_the_current_stream():
    inputs = {k: torch.from_numpy(v).cuda() for k, v in attention_inputs(1, 2, 70, 80, 64, R=1.0, seed=7).items()}
    expected = cuda_kernel.fourier_attention_cuda(**inputs, R=1.0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = cuda_kernel.fourier_attention_cuda(**inputs, R=1.0)
    stream.synchronize()
    assert torch.equal(out, expected)


@needs_gpu
@pytest.mark.parametrize("dim, power, message", [(300, 4, "dim must be in 1..256"), (8, 3, "power must be an even")])
def test_bad_parameters_are_errors(dim, power, message):
    q = torch.zeros(1, 1, 4, dim, device="cuda")
    with pytest.raises(RuntimeError, match=message):
        cuda_kernel.fourier_attention_cuda(q, q, q, 1.0, power)


@needs_gpu
def test_non_contiguous_last_dim_is_rejected():
    q = torch.zeros(1, 1, 8, 4, device="cuda").transpose(2, 3)
    with pytest.raises(ValueError, match="last dimension"):
        cuda_kernel.fourier_attention_cuda(q, q, q, 1.0)
