"""The CUDA kernel (plugins/cuda): library checks that run anywhere; parity with the float64 oracle on its CPU
emulation (plugins/cuda/emulator: the same kernel source, every thread and barrier emulated) and on a GPU.

Without a GPU the GPU cases skip with the reason; the library is still built (for every target architecture),
its C API is checked where that needs no device (exports, workspace query, validation), and the emulator runs
every parity case, also checking that the result does not depend on the order of the threads (races).
``$FOURIERFORMER_CUDA_LIBRARY`` selects a prebuilt library (scripts/gpu_checks.sh sets it).
The emulator plans its launches for a given SM count (default: an H100's 132), so the tests choose which paths
run (query tile, key splits and merge); ``ff_cuda_emulated_plan`` reports the plan, and the tests check that each
path they mean to run is the one planned.
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
from fourierformer.attention import fourier_attention_oracle

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
H100_SMS = 132
MODEL_SHAPES = {  # (B, H, N, D, causal) of the paper's models at batch 1
    "lm-small": (1, 8, 256, 16, 1), "lm-medium": (1, 8, 384, 32, 1), "deit-tiny": (1, 3, 197, 64, 0),
}


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


def planned(b, h, nq, nk, dim, sms) -> tuple[int, int, int, int]:
    """The launch plan's rule (fourier_attention_kernel.cuh, plan_grid): (dim bucket, queries per tile, key splits,
    blocks). Query tiles of 32 where the grid of 64-query tiles is under two waves of resident blocks (512 threads
    per SM up to bucket 128, 256 for bucket 256) or its last tile is at most half full; then enough key splits for
    two waves, at most one per key tile and 16."""
    bucket = next(x for x in (16, 32, 64, 128, 256) if dim <= x)
    sms = min(max(sms, 1), 256)

    def waves2(bq):
        return 2 * (512 if bucket <= 128 else 256) // (4 * bq) * sms

    tiles64, tiles32 = -(-nq // 64), -(-nq // 32)
    bq = 32 if b * h * tiles64 < waves2(64) or tiles32 < 2 * tiles64 else 64
    blocks = b * h * (tiles32 if bq == 32 else tiles64)
    splits = 1 if blocks >= waves2(bq) else max(1, min(-(-waves2(bq) // blocks), -(-nk // 64), 16))
    return bucket, bq, splits, blocks * splits


@pytest.mark.parametrize("b, h, nq, nk, dim", [(2, 3, 5, 7, 64), (1, 1, 1, 0, 1), (1, 2, 65, 200, 17),
                                               (3, 1, 64, 1, 256), (64, 16, 1024, 1024, 64), (1, 8, 256, 256, 16)])
def test_workspace_query_needs_no_gpu(lib, b, h, nq, nk, dim):
    """The workspace holds the sin/cos table (3 floats per (row, dim) of q and k, rows padded to 64, dims to 16)
    and, where a device of up to 256 SMs would split the keys, each split's (m, l, acc) per padded query row."""
    table = 12 * b * h * (_round_up(nq, 64) + _round_up(nk, 64)) * _round_up(dim, 16)
    splits = planned(b, h, nq, nk, dim, 256)[2]
    partial = 4 * splits * b * h * _round_up(nq, 64) * (dim + 2) if splits > 1 else 0
    assert lib.ff_cuda_workspace_size(ctypes.byref(_params(b=b, h=h, nq=nq, nk=nk, dim=dim))) == table + partial


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
    lib.ff_cuda_emulated_plan.restype = ctypes.c_char_p
    return lib


def emulated(q, k, v, R, power, eps, causal, order=0, seed=0, sms=H100_SMS) -> torch.Tensor:
    """The kernel run on the CPU by plugins/cuda/emulator as on a GPU of ``sms`` SMs (threads in ``order``: 0
    forward, 1 reverse, 2 shuffled)."""
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    p = params(q, k, R, power, eps, causal)
    args = [a for t in (q, k, v, out) for a in (ctypes.c_void_p(t.data_ptr()), ctypes.byref(cuda_kernel.strides(t)))]
    err = _emulator().ff_cuda_emulated_forward(ctypes.byref(p), DTYPES[q.dtype], *args, order, seed, sms)
    if err is not None:
        raise RuntimeError(err.decode())
    return out


def emulated_plan(b, h, nq, nk, dim, causal=0, sms=H100_SMS) -> tuple[tuple[int, ...], list[int]]:
    """(dim bucket, queries per tile, key splits, blocks, merge blocks) of the launch, and the key tiles of each
    block in launch order."""
    _kernel("emulator")
    p = _params(b=b, h=h, nq=nq, nk=nk, dim=dim, causal=causal)
    plan = (ctypes.c_int64 * 5)()
    tiles = (ctypes.c_int64 * 100000)()
    err = _emulator().ff_cuda_emulated_plan(ctypes.byref(p), sms, plan, tiles, len(tiles))
    if err is not None:
        raise RuntimeError(err.decode())
    return tuple(plan), list(tiles[:plan[3]])


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


def _run(kernel, shape, R, power, causal, dtype, shift=0.0, layout="contiguous", **options):
    """Normwise error of the kernel vs the float64 oracle of the inputs rounded to ``dtype``, in ``layout``."""
    def run(q, k, v):
        if layout == "bnhd":  # [B,N,H,D] storage viewed as [B,H,N,D]: non-contiguous, last dim contiguous
            q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        elif layout == "padded":  # rows of a wider buffer: row stride > D
            q, k, v = (torch.nn.functional.pad(t, (0, 5))[..., :t.shape[-1]] for t in (q, k, v))
        if layout != "contiguous":
            assert not q.is_contiguous() or q.shape[1] == 1 or q.shape[-1] == 1
        return kernel(q, k, v, R, power, EPS, bool(causal), **options)
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


# (shape, SM count): SHAPES on an H100 (small grids: 32-query tiles, split keys) and on 1 SM (64-query tiles
# where the grid allows, unsplit), so that every kernel instance's barriers are checked
ORDER_CASES = [(s, H100_SMS) for s in SHAPES[1:]] + [
    ((4, 2, 100, 80, 16), 1), ((4, 2, 100, 80, 32), 1), ((4, 2, 100, 80, 64), 1), ((4, 2, 100, 80, 128), 1),
    ((2, 1, 64, 70, 200), 1), ((1, 1, 300, 200, 128), 2),
]


def test_order_cases_cover_every_kernel_instance():
    """Every (dim bucket, query tile) runs in the barrier-order test, split and unsplit."""
    plans = {emulated_plan(*shape, sms=sms)[0][:3] for shape, sms in ORDER_CASES}
    instances = {(bucket, bq) for bucket, bq, _ in plans}
    assert instances == {(bucket, bq) for bucket in (16, 32, 64, 128, 256) for bq in (32, 64)}
    assert {splits > 1 for *_, splits in plans} == {False, True}


@pytest.mark.parametrize("shape, sms", ORDER_CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else str(c))
def test_emulated_threads_in_any_order_give_the_same_bits(shape, sms):
    """Between barriers the emulator runs the warps and their threads forward, reversed or shuffled: a missing
    __syncthreads or cp.async wait (a thread reading shared memory another writes in the same phase) would change the
    result."""
    run = _kernel("emulator")
    x = [torch.from_numpy(t) for t in attention_inputs(*shape, R=1.0, seed=3).values()]
    for causal in (False, True):
        expected = run(*x, 1.0, 4, EPS, causal, 0, 0, sms)
        for order, seed in ((1, 0), (2, 1), (2, 2)):
            assert torch.equal(run(*x, 1.0, 4, EPS, causal, order, seed, sms), expected), (causal, order, seed)


# ---- launch planning: query tile, key splits, block order (emulator) -------------------------------

@pytest.mark.parametrize("model", list(MODEL_SHAPES))
def test_model_shapes_fill_an_h100(model):
    """At batch 1 the paper's models launched 32 (lm-small), 48 (lm-medium) and 12 (deit-tiny) blocks of 64 queries;
    with 32-query tiles and split keys: 256, 576 and 84 (deit-tiny: 7 query tiles x 4 key tiles per head is all
    there is), two blocks of 32 queries per 64-query block's place."""
    b, h, n, dim, causal = MODEL_SHAPES[model]
    plan, _ = emulated_plan(b, h, n, n, dim, causal)
    assert plan[:4] == planned(b, h, n, n, dim, H100_SMS)
    assert plan[:4] == {"lm-small": (16, 32, 4, 256), "lm-medium": (32, 32, 6, 576), "deit-tiny": (64, 32, 4, 84)}[model]


@pytest.mark.parametrize("sms", [1, 8, H100_SMS, 1000])
@pytest.mark.parametrize("b, h, nq, nk, dim", [(1, 1, 1, 1, 1), (1, 8, 256, 256, 16), (4, 16, 1024, 1024, 64),
                                               (2, 3, 197, 197, 64), (1, 1, 20, 2000, 256), (8, 8, 96, 96, 128),
                                               (1, 2, 300, 0, 40)])
def test_plan_follows_the_rule(b, h, nq, nk, dim, sms):
    plan, _ = emulated_plan(b, h, nq, nk, dim, sms=sms)
    assert plan[:4] == planned(b, h, nq, nk, dim, sms)
    assert (plan[4] > 0) == (plan[2] > 1)  # the merge runs exactly when the keys are split


@pytest.mark.parametrize("sms", [1, H100_SMS])
@pytest.mark.parametrize("b, h, nq, nk", [(2, 3, 300, 300), (1, 4, 200, 450), (3, 2, 260, 130)])
def test_causal_blocks_run_longest_first_over_every_head(b, h, nq, nk, sms):
    """Along the launch order, causal key tiles per block never increase over every (batch, head) (split keys: are
    never more than one tile short of that order), and the blocks cover each query tile's visible key tiles once."""
    (_, bq, splits, blocks, _), tiles = emulated_plan(b, h, nq, nk, 64, causal=1, sms=sms)
    assert (splits > 1) == (sms > 1) and len(tiles) == blocks
    longest_first = sorted(tiles, reverse=True)
    assert tiles == longest_first if splits == 1 else all(t >= s - 1 for t, s in zip(tiles, longest_first))
    visible = [max(0, -(-min(nk, min(q0 + bq, nq) + nk - nq) // 64)) for q0 in range(0, nq, bq)]
    assert sum(tiles) == b * h * sum(visible)


# ---- split keys (merge) and the 32-query tile on the emulator -------------------------------------

SPLIT_CASES = [  # (B, H, Nq, Nk, D), all split on an H100: Nq < Nk, Nq > Nk (causal: rows without a visible key),
    # ragged tiles and chunks, every dim bucket (128, 256: the double-buffered kernels)
    (1, 2, 150, 200, 24), (1, 1, 200, 130, 40), (2, 1, 97, 257, 64), (1, 2, 33, 190, 100), (1, 1, 70, 300, 256),
    (1, 8, 130, 130, 16),
]


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("shape", SPLIT_CASES, ids=lambda s: "x".join(map(str, s)))
def test_split_keys_parity_with_float64_oracle(shape, causal, dtype):
    plan, _ = emulated_plan(*shape, causal)
    assert plan[2] > 1
    assert _run(_kernel("emulator"), shape, 1.0, 4, causal, dtype) <= TOLERANCE[dtype]


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("shape, sms", [((4, 2, 100, 60, 40), 1), ((3, 2, 120, 50, 64), 1), ((8, 3, 60, 40, 16), 4)],
                         ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else str(c))
def test_query_tile_choice_gives_the_same_bits(shape, sms, causal):
    """Unsplit, a row's arithmetic does not depend on its tile: 64- and 32-query tiles give the same bits (and the
    float64 parity of both)."""
    big, small = emulated_plan(*shape, causal, sms=sms)[0], emulated_plan(*shape, causal, sms=10 * sms)[0]
    assert (big[1], big[2]) == (64, 1) and (small[1], small[2]) == (32, 1), (big, small)
    x = [torch.from_numpy(t) for t in attention_inputs(*shape, R=1.0, seed=5).values()]
    assert torch.equal(emulated(*x, 1.0, 4, EPS, causal, sms=sms), emulated(*x, 1.0, 4, EPS, causal, sms=10 * sms))
    assert _run(_kernel("emulator"), shape, 1.0, 4, causal, torch.float32, sms=sms) <= TOLERANCE[torch.float32]


def _special_rows_inputs(seed=11):
    """(4, 2, 200, 130, 40) causal inputs where rows 0..69 see no key and rows 100 and 150 are so far from every key
    that all their weights underflow float32 (row sums < 1e-200: eps dominates, the output is ~0): row 100's
    log-weights stay finite (~-490), row 150's products of denominators overflow (log-weights -inf)."""
    x = {k: torch.from_numpy(v) for k, v in attention_inputs(4, 2, 200, 130, 40, R=1.0, seed=seed).items()}
    x["q"][:, :, 100] = 3.0
    x["q"][:, :, 150] = 30.0
    return x


def test_split_and_unsplit_agree_on_rows_without_keys_or_with_underflowing_weights():
    """Rows without a visible key and rows whose weights all underflow give 0 with and without split keys (the merge
    adds eps once, in the scale of the unsplit kernel), and every other row matches the float64 oracle."""
    assert emulated_plan(4, 2, 200, 130, 40, 1, sms=1)[0][2] == 1
    assert emulated_plan(4, 2, 200, 130, 40, 1, sms=H100_SMS)[0][2] > 1
    x = _special_rows_inputs()
    reference, sums = fourier_attention_oracle(*(t.double() for t in x.values()), 1.0, 4, EPS, True, with_row_sums=True)
    special = torch.zeros(200, dtype=torch.bool)
    special[:70] = special[100] = special[150] = True
    assert float(sums[..., ~special].min()) >= 1e3 * EPS and float(sums[..., [100, 150]].max()) < 1e-100
    for sms in (1, H100_SMS):
        out = emulated(*x.values(), 1.0, 4, EPS, True, sms=sms)
        assert not out[:, :, special].any(), sms
        assert float((out.double() - reference).norm() / reference.norm()) <= TOLERANCE[torch.float32], sms


def test_split_and_unsplit_propagate_nan_alike():
    """A NaN key makes NaN exactly the rows that see it, with and without split keys."""
    x = _special_rows_inputs()
    x["k"][:, :, 90, 3] = float("nan")
    sees = torch.arange(200) + (130 - 200) >= 90
    for sms in (1, H100_SMS):
        out = emulated(*x.values(), 1.0, 4, EPS, True, sms=sms)
        assert torch.equal(out.isnan().any(-1), sees.expand(4, 2, 200)), sms


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
