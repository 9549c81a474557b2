"""Shared fixtures: the built plugin library, op sessions, and non-vacuous attention inputs."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from polygraphy.logger import G_LOGGER

from export import plugin_library
from export.op_model import attention_inputs, ort_op_model  # noqa: F401 (attention_inputs: for the tests)
from export.runtime import ort_session
from export.validate import error_stats
from fourierformer import opspec
from fourierformer.attention import fourier_attention_oracle

G_LOGGER.module_severity = G_LOGGER.WARNING

MIN_ROW_SUM_OVER_EPS = 1e3
"""Every query row with a visible key must have sum_j w_ij >= this * eps, or the test would only check eps."""


@pytest.fixture(scope="session")
def ort_library() -> Path:
    """The ONNX Runtime custom-op library, built once per test session."""
    return plugin_library.ort_library()


@functools.lru_cache(maxsize=None)
def _session(library: Path, attrs: tuple, dtype: str) -> ort.InferenceSession:
    return ort_session(ort_op_model(dict(attrs), np.dtype(dtype)).SerializeToString(), library)


@pytest.fixture(scope="session")
def op_session(ort_library):
    """Factory: an ORT session running one FourierAttention node with the given attributes and dtype."""

    def make(dtype=np.float32, **attrs) -> ort.InferenceSession:
        full = opspec.check_attributes(attrs)
        return _session(ort_library, tuple(sorted(full.items())), np.dtype(dtype).name)

    return make


def oracle(inputs: dict[str, np.ndarray], R: float, power: int, eps: float, causal: int) -> tuple[np.ndarray, float]:
    """Float64 reference output and the smallest row sum sum_j w_ij over rows that see at least one key."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    out, sums = fourier_attention_oracle(t["q"], t["k"], t["v"], R, power, eps, bool(causal), with_row_sums=True)
    nq, nk = inputs["q"].shape[2], inputs["k"].shape[2]
    rows = np.arange(nq) + (nk - nq) >= 0 if causal else np.ones(nq, bool)
    visible = sums.numpy()[..., rows]
    return out.numpy(), float(visible.min()) if visible.size else np.inf


def assert_not_vacuous(min_row_sum: float, eps: float) -> None:
    """Fail if some row's weights are so small that eps dominates its output."""
    assert min_row_sum >= MIN_ROW_SUM_OVER_EPS * eps, f"vacuous test: min row sum {min_row_sum:.3g} vs eps={eps}"


def rounded_parity_error(run, shape: tuple[int, ...], R: float, power: int, causal: int, dtype: torch.dtype,
                         eps: float, shift: float = 0.0) -> float:
    """Normwise error of out = run(q, k, v) against the float64 oracle of the inputs rounded to ``dtype`` (after
    checking the rows are not dominated by eps); out must have q's dtype and shape."""
    inputs = attention_inputs(*shape, R=R, seed=sum(shape) + power, spread=1.5 / np.sqrt(power), shift=shift)
    rounded = {k: torch.from_numpy(v).to(dtype) for k, v in inputs.items()}
    reference, min_row_sum = oracle({k: v.float().numpy() for k, v in rounded.items()}, R, power, eps, causal)
    assert_not_vacuous(min_row_sum, eps)
    out = run(*rounded.values())
    assert out.dtype == dtype and out.shape == rounded["q"].shape
    return error_stats("out", out.float().cpu().numpy(), reference).norm_rel
