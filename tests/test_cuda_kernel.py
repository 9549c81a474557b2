"""The CUDA kernel: built for every target architecture here; parity on a GPU where one is present."""

from __future__ import annotations

import ctypes
import re
import subprocess

import numpy as np
import pytest
import torch

from conftest import assert_not_vacuous, attention_inputs, oracle
from export import cuda_kernel, plugin_library
from export.validate import error_stats

MISSING = cuda_kernel.available()
needs_gpu = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def test_library_exports_only_the_launcher():
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(plugin_library.cuda_library())],
                             capture_output=True, text=True, check=True).stdout.split()
    assert sorted(s for s in symbols if s.startswith("ff_")) == ["ff_cuda_forward", "ff_cuda_workspace_size"]
    assert not [s for s in symbols if s.startswith("cuda")]


def test_library_holds_code_for_every_target_architecture():
    """The fat binary names each architecture it carries code for (sm_80, 86, 89, 90 and 120 by default)."""
    archs = set(re.findall(rb"sm_(\d+)", plugin_library.cuda_library().read_bytes()))
    assert archs >= {b"80", b"86", b"89", b"90", b"120"}


def test_workspace_query_needs_no_gpu():
    p = cuda_kernel.Params(2, 3, 5, 7, 64, 1.0, 4, 1e-6, 0)
    assert cuda_kernel.library().ff_cuda_workspace_size(ctypes.byref(p)) == 0


def _run(shape, R, power, causal, dtype, shift=0.0, transpose=False):
    inputs = attention_inputs(*shape, R=R, seed=sum(shape), spread=1.5 / np.sqrt(power), shift=shift)
    rounded = {k: torch.from_numpy(v).to(dtype) for k, v in inputs.items()}
    reference, min_row_sum = oracle({k: v.float().numpy() for k, v in rounded.items()}, R, power, 1e-6, causal)
    assert_not_vacuous(min_row_sum, 1e-6)
    q, k, v = (t.cuda() for t in rounded.values())
    if transpose:  # [B,N,H,D] storage viewed as [B,H,N,D]: non-contiguous, last dim contiguous
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    out = cuda_kernel.fourier_attention_cuda(q, k, v, R, power, 1e-6, bool(causal))
    assert out.dtype == dtype and out.shape == q.shape
    return error_stats("out", out.float().cpu().numpy(), reference).norm_rel


@needs_gpu
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("R, power", [(0.1, 2), (1.0, 4), (10.0, 8)])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 5, 9, 3), (1, 2, 37, 53, 17), (2, 2, 64, 64, 64),
                                   (1, 1, 9, 70, 100), (1, 2, 40, 33, 128), (1, 1, 20, 30, 256)])
def test_parity_with_float64_oracle(shape, R, power, causal, dtype):
    assert _run(shape, R, power, causal, dtype) <= TOLERANCE[dtype]


@needs_gpu
def test_large_offset_and_strided_inputs():
    assert _run((2, 2, 40, 50, 24), 10.0, 4, 0, torch.float32, shift=5.0) <= TOLERANCE[torch.float32]
    assert _run((2, 3, 17, 19, 40), 1.0, 4, 1, torch.float32, transpose=True) <= TOLERANCE[torch.float32]


@needs_gpu
@pytest.mark.parametrize("dim, power, message", [(300, 4, "dim must be in 1..256"), (8, 3, "power")])
def test_bad_parameters_are_errors(dim, power, message):
    q = torch.zeros(1, 1, 4, dim, device="cuda")
    with pytest.raises(RuntimeError, match=message):
        cuda_kernel.fourier_attention_cuda(q, q, q, 1.0, power)
