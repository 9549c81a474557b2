"""The ONNX Runtime custom op against the eager float32 reference and the float64 oracle, via Polygraphy."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.comparator import Comparator, SimpleCompareFunc

from conftest import MIN_ROW_SUM_OVER_EPS, assert_not_vacuous, attention_inputs, oracle
from export.op_model import ort_op_model
from export.runtime import ort_session
from export.validate import EagerRunner, error_stats
from fourierformer.attention import fourier_attention_reference

MAX_NORM_ERROR_VS_FP64 = 1e-5
SHAPES = [  # (B, H, Nq, Nk, D): N=1, D=1, D not a multiple of 8, Nq != Nk both ways, D up to 128
    (1, 1, 1, 1, 1), (2, 3, 5, 7, 3), (1, 2, 17, 9, 17), (2, 2, 33, 33, 64), (1, 1, 8, 130, 128), (1, 4, 1, 40, 8),
]


def _eager(R: float, power: int, eps: float, causal: int):
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fourier_attention_reference(q, k, v, R, power, eps, bool(causal))
    return run


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("R", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("power", [2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity_with_polygraphy(op_session, shape, power, R, causal):
    eps = 1e-6
    inputs = attention_inputs(*shape, R=R, seed=sum(shape) + power, spread=1.5 / np.sqrt(power))
    reference, min_row_sum = oracle(inputs, R, power, eps, causal)
    assert_not_vacuous(min_row_sum, eps)
    session = op_session(R=R, power=power, eps=eps, causal=causal)
    runners = [OnnxrtRunner(session, name="ort-fourier"), EagerRunner(_eager(R, power, eps, causal), ["out"], inputs, "eager-fp32")]
    results = Comparator.run(runners, data_loader=[inputs])
    assert Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-5, rtol=1e-4))
    out = results[0][1][0]["out"]
    assert out.dtype == np.float32 and out.shape == inputs["q"].shape
    assert error_stats("out", out, reference).norm_rel <= MAX_NORM_ERROR_VS_FP64


@pytest.mark.parametrize("R", [0.1, 1.0, 10.0])
def test_large_offset_cancellation(op_session, R):
    """q and k share a large offset: R*q is big while R*(q-k) is small (the angle-difference trick's worst case)."""
    inputs = attention_inputs(2, 2, 40, 50, 24, R=R, seed=3, shift=5.0)
    reference, min_row_sum = oracle(inputs, R, 4, 1e-6, 0)
    assert_not_vacuous(min_row_sum, 1e-6)
    out = op_session(R=R).run(None, inputs)[0]
    assert error_stats("out", out, reference).norm_rel <= MAX_NORM_ERROR_VS_FP64


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dims=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    R=st.floats(0.05, 20.0), power=st.sampled_from([2, 4, 6, 8]), causal=st.integers(0, 1),
    spread=st.floats(0.2, 3.0), shift=st.floats(-3.0, 3.0), seed=st.integers(0, 2**31),
)
def test_property_matches_oracle(op_session, dims, R, power, causal, spread, shift, seed):
    inputs = attention_inputs(*dims, R=R, seed=seed, spread=spread, shift=shift)
    reference, min_row_sum = oracle(inputs, R, power, 1e-6, causal)
    assume(min_row_sum >= MIN_ROW_SUM_OVER_EPS * 1e-6)
    out = op_session(R=R, power=power, causal=causal).run(None, inputs)[0]
    # Tiny draws (one query, D=1) can average v to nearly 0, where a normwise error is ill-posed; measure
    # against the same average of |v| (equal to ||reference|| when nothing cancels).
    magnitude, _ = oracle({**inputs, "v": np.abs(inputs["v"])}, R, power, 1e-6, causal)
    assert np.linalg.norm(out - reference) / np.linalg.norm(magnitude) <= MAX_NORM_ERROR_VS_FP64


def test_weights_underflow_gives_eps_semantics(op_session):
    """Every weight far below eps: the output is sum w v / (sum w + eps), tiny but not NaN or zeroed wrongly."""
    inputs = attention_inputs(1, 1, 6, 6, 32, R=1.0, seed=1, spread=12.0)
    reference, min_row_sum = oracle(inputs, 1.0, 4, 1e-6, 0)
    assert min_row_sum < 1e-6
    out = op_session().run(None, inputs)[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-30)


def test_causal_rows_without_keys_are_zero(op_session):
    """Nq > Nk with causal: the first Nq - Nk queries see no key, so their output is 0 (as in the reference)."""
    inputs = attention_inputs(1, 2, 7, 3, 5, R=1.0, seed=2)
    out = op_session(causal=1).run(None, inputs)[0]
    assert np.all(out[:, :, :4] == 0) and np.all(np.abs(out[:, :, 4:]) > 0)
    reference, _ = oracle(inputs, 1.0, 4, 1e-6, 1)
    assert error_stats("out", out, reference).norm_rel <= MAX_NORM_ERROR_VS_FP64


def _with_attribute(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    """``model`` with one attribute of its node replaced, bypassing the Python-side range checks."""
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [onnx.helper.make_attribute(name, value)])
    return model


@pytest.mark.parametrize("name, value, message", [
    ("R", 0.0, "R"), ("R", -1.0, "R"), ("R", float("inf"), "R"), ("R", float("nan"), "R"),
    ("power", 3, "power"), ("power", 0, "power"), ("eps", 0.0, "eps"), ("causal", 2, "causal"),
])
def test_bad_attribute_fails_session_creation(ort_library, name, value, message):
    model = _with_attribute(ort_op_model({}), name, value)
    with pytest.raises(Exception, match=message):
        ort_session(model.SerializeToString(), ort_library)


@pytest.mark.parametrize("change, message", [  # the process survives each: no crash
    (lambda t: {**t, "q": t["q"][0]}, "rank"),
    (lambda t: {**t, "k": np.concatenate([t["k"]] * 2, axis=0), "v": np.concatenate([t["v"]] * 2, axis=0)}, "batch|B"),
    (lambda t: {**t, "k": t["k"][:, :1], "v": t["v"][:, :1]}, "head|H"),
    (lambda t: {**t, "k": t["k"][..., :3]}, "dim|D"),
    (lambda t: {**t, "v": t["v"][:, :, :2]}, "Nk|key"),
    (lambda t: {**t, "v": np.concatenate([t["v"]] * 2, axis=0)}, "batch|B"),
    (lambda t: {**t, "v": t["v"][:, :1]}, "head|H"),
    (lambda t: {**t, "v": t["v"][..., :3]}, "dim|D"),
])
def test_bad_input_fails_run_with_message(ort_library, change, message):
    model = ort_op_model({})
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.ClearField("shape")  # no declared rank: the op itself must check
    inputs = change(attention_inputs(2, 2, 4, 5, 6, R=1.0))
    with pytest.raises(Exception, match=f"FourierAttention.*({message})"):
        ort_session(model.SerializeToString(), ort_library).run(None, inputs)


@pytest.mark.parametrize("with_r", [False, True], ids=["3-inputs", "R-input"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=str)
def test_output_shape_is_inferred_when_the_session_loads(ort_library, dtype, with_r):
    """The op's shape inference gives out q's shape, symbolic dims included, where the model declares none."""
    model = _with_r_input(ort_op_model({}, dtype)) if with_r else ort_op_model({}, dtype)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = ort_session(model.SerializeToString(), ort_library).get_outputs()[0]
    assert inferred.shape == ["B", "H", "Nq", "D"]
    assert inferred.type == ("tensor(float)" if dtype == np.float32 else "tensor(float16)")


def _declared(shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """The op model with these static input shapes and no declared output shape."""
    model = ort_op_model({})
    for value in model.graph.input:
        value.type.tensor_type.shape.Clear()
        for size in shapes[value.name]:
            value.type.tensor_type.shape.dim.add().dim_value = size
    model.graph.output[0].type.tensor_type.ClearField("shape")
    return model


def test_static_output_shape_is_inferred(ort_library):
    model = _declared({"q": [1, 2, 5, 8], "k": [1, 2, 7, 8], "v": [1, 2, 7, 8]})
    assert ort_session(model.SerializeToString(), ort_library).get_outputs()[0].shape == [1, 2, 5, 8]


@pytest.mark.parametrize("shapes, message", [
    ({"q": [1, 2, 5, 8], "k": [1, 2, 7, 9], "v": [1, 2, 7, 9]}, "q and k disagree on D"),
    ({"q": [1, 2, 5, 8], "k": [1, 2, 7, 8], "v": [1, 2, 6, 8]}, "same Nk"),
], ids=["D", "Nk"])
def test_impossible_declared_shapes_infer_nothing_and_fail_at_run(ort_library, shapes, message):
    """ONNX Runtime ignores errors of shape inference: nothing is inferred, and the run names the problem."""
    session = ort_session(_declared(shapes).SerializeToString(), ort_library)
    assert session.get_outputs()[0].shape == []
    feeds = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    with pytest.raises(Exception, match=message):
        session.run(None, feeds)


@pytest.mark.parametrize("causal", [0, 1])
def test_float16_inputs_computed_in_float32(op_session, causal):
    inputs = {k: v.astype(np.float16) for k, v in attention_inputs(2, 3, 19, 23, 40, R=1.0, seed=9).items()}
    reference, min_row_sum = oracle({k: v.astype(np.float32) for k, v in inputs.items()}, 1.0, 4, 1e-6, causal)
    assert_not_vacuous(min_row_sum, 1e-6)
    out = op_session(np.float16, causal=causal).run(None, inputs)[0]
    assert out.dtype == np.float16
    assert error_stats("out", out, reference).norm_rel <= 1e-3  # float16 output rounding: 2^-11


def _with_r_input(model: onnx.ModelProto, shape: list[int | str] | None = None) -> onnx.ModelProto:
    """``model`` (an ort_op_model) with a fourth input R: a float32 graph input of ``shape`` (default: a scalar)."""
    model.graph.input.append(onnx.helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, shape or []))
    model.graph.node[0].input.append("R")
    return model


@functools.lru_cache(maxsize=None)
def _r_input_session(library: Path, dtype: str, shape: tuple, causal: int):
    """A session of the op with R fed at run time, declared of ``shape``; its attribute R=7 must be overridden."""
    model = _with_r_input(ort_op_model({"R": 7.0, "causal": causal}, np.dtype(dtype)), list(shape))
    return ort_session(model.SerializeToString(), library)


R_INPUT_CASES = [1e-3, 0.1, 1.0, 10.0, 1e4]
"""R values fed at run time, extreme ones included (inputs scale with 1/R, so the weights stay non-vacuous)."""


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["scalar", "1", "1x1"])
@pytest.mark.parametrize("dtype, bound", [(np.float32, MAX_NORM_ERROR_VS_FP64), (np.float16, 1e-3)],
                         ids=["fp32", "fp16"])
def test_r_input_overrides_the_attribute_at_each_run(ort_library, dtype, bound, shape, causal):
    """One session, R changed at each run: each output matches the float64 oracle at that R (float16: of the rounded
    inputs, within float16's output rounding)."""
    session = _r_input_session(ort_library, np.dtype(dtype).name, shape, causal)
    for R in R_INPUT_CASES:
        inputs = {k: v.astype(dtype) for k, v in attention_inputs(2, 3, 9, 11, 16, R=R, seed=5, spread=0.75).items()}
        reference, min_row_sum = oracle({k: v.astype(np.float32) for k, v in inputs.items()}, R, 4, 1e-6, causal)
        assert_not_vacuous(min_row_sum, 1e-6)
        out = session.run(None, {**inputs, "R": np.full(shape, R, np.float32)})[0]
        assert out.dtype == dtype
        assert error_stats("out", out, reference).norm_rel <= bound, f"R={R}"


def test_r_input_gives_what_the_attribute_gives(op_session, ort_library):
    """The 4-input form fed R and the 3-input form with that R as its attribute: the same bits."""
    inputs = attention_inputs(1, 2, 7, 5, 12, R=2.5, seed=4)
    with_input = _r_input_session(ort_library, "float32", (), 1).run(None, {**inputs, "R": np.array(2.5, np.float32)})[0]
    np.testing.assert_array_equal(with_input, op_session(R=2.5, causal=1).run(None, inputs)[0])


@pytest.mark.parametrize("value, message", [
    (0.0, "must be finite and > 0, got R=0$"), (-2.0, "must be finite and > 0, got R=-2$"),
    (float("nan"), "must be finite and > 0, got R=nan$"), (float("inf"), "must be finite and > 0, got R=inf$"),
    ([1.0, 2.0], r"must hold exactly one element, got shape \[2\]$"),
    (np.ones((0,)), r"must hold exactly one element, got shape \[0\]$"),
], ids=["zero", "negative", "nan", "inf", "two", "none"])
def test_bad_r_input_fails_run_with_message(ort_library, value, message):
    """A bad R fails that run with one line naming R and the value; the session then still runs a good one."""
    session = ort_session(_with_r_input(ort_op_model({}), ["n"]).SerializeToString(), ort_library)
    inputs = attention_inputs(1, 1, 3, 3, 4, R=1.0)
    with pytest.raises(Exception) as caught:
        session.run(None, {**inputs, "R": np.atleast_1d(np.asarray(value, np.float32))})
    text = str(caught.value).strip()
    assert "\n" not in text and re.search(f"FourierAttention: input R {message}", text), text
    assert np.isfinite(session.run(None, {**inputs, "R": np.ones(1, np.float32)})[0]).all()


def test_an_omitted_r_input_uses_the_attribute(op_session, ort_library):
    """A fourth input left empty (an omitted optional input) is the 3-input form: R from the attribute."""
    model = ort_op_model({"R": 2.5})
    model.graph.node[0].input.append("")
    inputs = attention_inputs(1, 2, 6, 6, 8, R=2.5, seed=6)
    out = ort_session(model.SerializeToString(), ort_library).run(None, inputs)[0]
    np.testing.assert_array_equal(out, op_session(R=2.5).run(None, inputs)[0])


def branch_bound(power: int) -> float:
    """Relative error bound per output near the kernel's small-|x| branch point (|x| = 1): a float32 sinc's few ulps
    times power, with a margin over what was measured 2026-12-02 (1.9e-7 at power 2, 3.5e-7 at 4, 6.0e-6 at 64).
    A changed series coefficient, or the series used up to |x| < 1.2, gives 1e-6 to 3e-5."""
    return 1e-7 * (1.2 * power + 1)


@pytest.mark.parametrize("power", range(2, 66, 2))
@pytest.mark.parametrize("D", [1, 16])
def test_accuracy_around_the_small_x_branch_point(op_session, power, D):
    """Each head holds one query and two keys: one at x = 0 (weight 1) and one at x in [0.6, 1.4], dense around
    the branch point x = 1; v = (0, 1) and a tiny eps make out = w / (1 + w + eps) with w = sinc(x)**power, so
    out's relative error is w's."""
    R, eps = 1.0, 1e-30
    x = np.concatenate([np.linspace(0.6, 1.4, 801), 1.0 + np.arange(-40, 41) * 2.0 ** -23])
    q = np.zeros((1, x.size, 1, D), np.float32)
    k = np.zeros((1, x.size, 2, D), np.float32)
    k[0, :, 1, 0] = (-x / R).astype(np.float32)
    v = np.zeros((1, x.size, 2, D), np.float32)
    v[0, :, 1, :] = 1.0
    out = op_session(R=R, power=power, eps=eps).run(None, {"q": q, "k": k, "v": v})[0][0, :, 0, 0]
    xd = -k[0, :, 1, 0].astype(np.float64) * R
    w = (np.sin(xd) / xd) ** power
    reference = w / (1.0 + w + eps)
    assert (w >= 1e3 * eps).all() and (w >= 1e-20).all(), "vacuous: the tested weights must dominate eps"
    error = np.abs(out.astype(np.float64) - reference) / reference
    assert error.max() <= branch_bound(power), f"error {error.max():.3g} at x = {xd[error.argmax()]:.9g}"


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_parity_on_the_narrower_cpu_paths(isa):
    """The op's library picks its path when it loads: the parity cases again in a process with FF_CPU_ISA set (the
    best path, the default, runs them above)."""
    from export import cpu_kernel

    if (reason := cpu_kernel.isa_unsupported(isa)) is not None:
        pytest.skip(reason)
    if cpu_kernel.isa() == isa:
        pytest.skip(f"{isa} is this CPU's best path: the cases above ran on it")
    env = {**os.environ, "FF_CPU_ISA": isa}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                          "-k", "parity_with_polygraphy or large_offset"], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parent, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


def test_an_unknown_cpu_path_is_refused_by_the_op():
    code = ("import numpy as np; from export import plugin_library; from export.op_model import ort_op_model; "
            "from export.runtime import ort_session; "
            "ort_session(ort_op_model({}, np.dtype('float32')).SerializeToString(), plugin_library.ort_library())")
    env = {**os.environ, "FF_CPU_ISA": "avx1024"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parent, timeout=300)
    assert run.returncode != 0 and "FF_CPU_ISA must be auto, avx512, avx2 or baseline" in run.stderr, run.stderr
