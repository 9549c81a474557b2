"""fuse: Fourier attention written by users in plain PyTorch, exported the ordinary way (dynamo and TorchScript),
becomes one FourierAttention node per layer that runs equal to the unfused graph; near misses are left alone.

The user models are written here, not with fourierformer/ (only the eager-reference pattern uses its function).
The unfused graph runs in stock ONNX Runtime; the fused one goes through the ONNX Runtime backend's passes
(cleanup, to_onnxruntime) and runs with our custom-op library. to_onnxruntime folds R into an attribute, so it needs
a constant R: for R as a graph input, the test first binds that input to the value it feeds the unfused graph.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import assert_not_vacuous, oracle
from export.op_model import IR_VERSION, attention_inputs
from export.passes import cleanup, fuse, fuse_with_report, to_onnxruntime
from export.passes.custom_op import fourier_nodes
from export.runtime import ort_session
from export.validate import error_stats
from fourierformer import opspec
from fourierformer.attention import fourier_attention_reference

EXPORTERS = ("dynamo", "torchscript")
MAX_NORM_ERROR = 1e-5
EPS = 1e-6
R_VALUE = 1.5
SIZES = (2, 2, 6, 6, 8)
"""B, H, Nq, Nk, D of the test inputs."""


@dataclass(frozen=True)
class Form:
    """How a user writes Fourier attention: each field one choice; the defaults are the paper's official code."""

    layout: str = "official-lm"
    """official-lm: q, k, v [L,B,H,D], einsum('ijbn,jbnd->ibnd') after normalising; official-vit: q, k [N,B,H,D],
    v [B,H,N,D], normalised weights permuted to [B,H,Nq,Nk] @ v; bhnd: [B,H,N,D], (w @ v) / (sum + eps)."""
    sinc: str = "where"  # where: where(x == 0, 1, sin(x)/x) | torch: torch.sinc(x / pi) | tiny: where(|x| < 1e-4, ...)
    product: str = "prod"  # prod | log: exp(sum(log|s|)) * prod(sign(s))
    power: str = "pow"  # pow: w ** n | mul: w * w * ... | a number: w ** that number (near misses)
    r: str = "initializer"  # initializer (a Parameter) | constant (a Python float) | input (a graph input) | per-dim
    causal: bool = False
    mask: str = "causal"  # causal | window (a near miss: keys up to i + 1 visible)
    normaliser: str = "sum"  # sum | max | queries | eps-input | softmax | scaled (near misses but sum)


class UserAttention(nn.Module):
    """Fourier attention in the style ``form`` says."""

    def __init__(self, form: Form, r: float = R_VALUE, dim: int = SIZES[-1]):
        super().__init__()
        self.form = form
        values = torch.linspace(0.5, 2.0, dim) * r if form.r == "per-dim" else torch.tensor([r])
        self.paramR = nn.Parameter(values)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        f = self.form
        R = extra[0] if f.r == "input" else R_VALUE if f.r == "constant" else self.paramR
        time_major = f.layout != "bhnd"
        x = R * ((q[:, None] - k[None]) if time_major else (q.unsqueeze(-2) - k.unsqueeze(-3)))
        w = self._power(self._product(self._sinc(x)))
        keys = 1 if time_major else -1
        if f.causal:
            nq, nk = w.shape[0 if time_major else -2], w.shape[keys]
            hidden = torch.triu(torch.ones(nq, nk, dtype=torch.bool), diagonal=1 + (f.mask == "window"))
            w = w.masked_fill(hidden[:, :, None, None] if time_major else hidden, 0.0)
        if f.normaliser == "scaled":
            w = 2.0 * w
        if f.layout == "bhnd":
            return (w @ v) / self._denominator(w, keys, extra)
        weights = w.softmax(keys) if f.normaliser == "softmax" else w / self._denominator(w, keys, extra)
        if f.layout == "official-lm":
            return torch.einsum("ijbn,jbnd->ibnd", weights, v)
        return weights.permute(2, 3, 0, 1) @ v

    def _sinc(self, x: torch.Tensor) -> torch.Tensor:
        if self.form.sinc == "torch":
            return torch.sinc(x / math.pi)
        zero = x.abs() < 1e-4 if self.form.sinc == "tiny" else x == 0
        return torch.where(zero, torch.ones_like(x), torch.sin(x) / torch.where(zero, torch.ones_like(x), x))

    def _product(self, s: torch.Tensor) -> torch.Tensor:
        if self.form.product == "log":
            return torch.exp(torch.log(torch.abs(s)).sum(-1)) * torch.sign(s).prod(-1)
        return s.prod(-1)

    def _power(self, p: torch.Tensor) -> torch.Tensor:
        if self.form.power == "mul":
            return p * p * p * p
        return p ** (4 if self.form.power == "pow" else float(self.form.power))

    def _denominator(self, w: torch.Tensor, keys: int, extra: tuple[torch.Tensor, ...]) -> torch.Tensor:
        f = self.form
        if f.normaliser == "max":
            return w.amax(keys, keepdim=True) + EPS
        return w.sum(0 if f.normaliser == "queries" else keys, keepdim=True) + (
            extra[-1] if f.normaliser == "eps-input" else EPS)


class Reference(nn.Module):
    """Our own eager reference exported plainly, with R a parameter."""

    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.R = nn.Parameter(torch.tensor([R_VALUE]))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fourier_attention_reference(q, k, v, self.R, 4, EPS, self.causal)


class TwoLayers(nn.Module):
    """Two attention layers with their own R; the second's on 2q, 2k with R/2 has the first's weights."""

    def __init__(self, form: Form):
        super().__init__()
        self.first, self.second = UserAttention(form, R_VALUE), UserAttention(form, 0.5 * R_VALUE)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.first(q, k, v) + self.second(2 * q, 2 * k, v)


def _bhnd_inputs(batch: int = SIZES[0], seq: int = SIZES[2]) -> dict[str, np.ndarray]:
    """Random q, k, v [B,H,N,D], scaled so that the weights neither vanish nor saturate."""
    return attention_inputs(batch, SIZES[1], seq, seq, SIZES[4], R=R_VALUE, seed=7 + seq, spread=0.75)


def _inputs(form: Form, batch: int = SIZES[0], seq: int = SIZES[2]) -> dict[str, np.ndarray]:
    """The graph inputs for ``form``: :func:`_bhnd_inputs` in its layout, and R or eps where it takes them."""
    inputs = _bhnd_inputs(batch, seq)
    to_time_major = {"official-lm": "qkv", "official-vit": "qk", "bhnd": ""}[form.layout]
    arrays = {name: np.ascontiguousarray(a.transpose(2, 0, 1, 3)) if name in to_time_major else a
              for name, a in inputs.items()}
    if form.r == "input":
        arrays["R"] = np.array([R_VALUE], np.float32)
    if form.normaliser == "eps-input":
        arrays["eps"] = np.array([EPS], np.float32)
    return arrays


def _export(model: nn.Module, inputs: dict[str, np.ndarray], exporter: str, dynamic: tuple | None = None,
            ) -> onnx.ModelProto:
    """``model`` exported as a user would: static shapes unless ``dynamic`` gives each input's dynamic axes
    (torch.export.Dim by axis; the TorchScript exporter gets their names)."""
    args = tuple(torch.from_numpy(a) for a in inputs.values())
    names = {"input_names": list(inputs), "output_names": ["out"], "opset_version": 18}
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            return torch.onnx.export(model, args, dynamo=True, verbose=False, dynamic_shapes=dynamic,
                                     **names).model_proto
        buffer = io.BytesIO()
        axes = {name: {axis: dim.__name__ for axis, dim in dims.items()} for name, dims in zip(inputs, dynamic or ())}
        torch.onnx.export(model, args, buffer, dynamo=False, dynamic_axes=axes or None, **names)
    return onnx.load_from_string(buffer.getvalue())


def _proto(graph: gs.Graph) -> bytes:
    model = gs.export_onnx(graph)
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def _bind_inputs(graph: gs.Graph, values: dict[str, np.ndarray]) -> gs.Graph:
    """A copy of ``graph`` with the named graph inputs replaced by constants of these values."""
    graph = graph.copy()
    for tensor in [t for t in graph.inputs if t.name in values]:
        graph.inputs.remove(tensor)
        tensor.to_constant(values[tensor.name])
    return graph


def _check_fused(model: nn.Module, form: Form, exporter: str, library, layers: int = 1,
                 dynamic: tuple | None = None, sizes: tuple[tuple[int, int], ...] = ((SIZES[0], SIZES[2]),)
                 ) -> gs.Graph:
    """Export, fuse, check the node count and the outputs at each (batch, seq) of ``sizes``: fused with our op ==
    unfused in stock ONNX Runtime."""
    fused, report = fuse_with_report(gs.import_onnx(proto := _export(model, _inputs(form), exporter, dynamic)))
    assert report.fused == layers == len(fourier_nodes(fused)), "\n".join(report.lines())
    assert [n.op for n in fused.nodes].count("Sin") == 0
    onnx.checker.check_model(gs.export_onnx(fused))
    unfused = ort.InferenceSession(_proto(gs.import_onnx(proto)), providers=["CPUExecutionProvider"])
    bound = {"R": np.array([R_VALUE], np.float32)} if form.r == "input" else {}
    runnable = ort_session(_proto(cleanup(to_onnxruntime(cleanup(_bind_inputs(fused, bound))))), library)
    for batch, seq in sizes:
        assert_not_vacuous(oracle(_bhnd_inputs(batch, seq), R_VALUE, 4, EPS, int(form.causal))[1], EPS)
        inputs = _inputs(form, batch, seq)
        expected = unfused.run(None, inputs)[0]
        out = runnable.run(None, {name: a for name, a in inputs.items() if name not in bound})[0]
        assert out.shape == expected.shape
        assert error_stats("out", out, expected).norm_rel <= MAX_NORM_ERROR
    return fused


PATTERNS = {
    "official-lm-causal": Form(causal=True),
    "official-lm": Form(),
    "official-vit": Form(layout="official-vit"),
    "bhnd-causal": Form(layout="bhnd", causal=True),
    "torch-sinc": Form(layout="bhnd", sinc="torch"),
    "tiny-sinc": Form(sinc="tiny", causal=True),
    "log-product": Form(layout="bhnd", product="log"),
    "mul-power": Form(power="mul", causal=True),
    "constant-R": Form(layout="official-vit", r="constant"),
    "input-R": Form(layout="bhnd", r="input", causal=True),
    "input-R-official": Form(r="input", sinc="torch", product="log", power="mul"),
}
NO_TORCHSCRIPT = {"torch-sinc", "input-R-official"}
"""The TorchScript exporter has no symbolic for aten::sinc."""


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", PATTERNS)
def test_pattern_is_fused_and_equal(name, exporter, ort_library):
    if exporter == "torchscript" and name in NO_TORCHSCRIPT:
        pytest.skip("torch.onnx.export(dynamo=False) cannot export aten::sinc")
    form = PATTERNS[name]
    fused = _check_fused(UserAttention(form), form, exporter, ort_library)
    node = fourier_nodes(fused)[0]
    assert node.attrs == {"power": 4, "eps": pytest.approx(EPS), "causal": int(form.causal)}
    b, h, n, _, d = SIZES
    assert [list(t.shape) for t in node.inputs[:3]] == [[b, h, n, d]] * 3  # re-laid out to [B, H, N, D]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("causal", [False, True])
def test_eager_reference_is_fused(exporter, causal, ort_library):
    fused = _check_fused(Reference(causal), Form(layout="bhnd", causal=causal), exporter, ort_library)
    assert fourier_nodes(fused)[0].attrs["causal"] == int(causal)
    assert [n.op for n in fused.nodes] == [opspec.OP_TYPE]  # the reference's layout is the op's: no Transpose


def test_two_layers_fused_with_their_own_R(ort_library):
    form = Form(causal=True)
    fused = _check_fused(TwoLayers(form), form, "dynamo", ort_library, layers=2)
    r_values = sorted(float(n.inputs[3].values) for n in fourier_nodes(fused))
    assert r_values == pytest.approx([0.5 * R_VALUE, R_VALUE])


BATCH, SEQ = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=2, max=32)
DYNAMIC = {  # name: (model, form, dynamic axes of each of q, k, v)
    "official-lm-causal": (UserAttention(Form(causal=True)), Form(causal=True), {0: SEQ, 1: BATCH}),
    "official-vit": (UserAttention(Form(layout="official-vit")), Form(layout="official-vit"), None),
    "bhnd-causal": (UserAttention(Form(layout="bhnd", causal=True)), Form(layout="bhnd", causal=True),
                    {0: BATCH, 2: SEQ}),
    "reference-causal": (Reference(True), Form(layout="bhnd", causal=True), {0: BATCH, 2: SEQ}),
}
"""Exports with a dynamic batch and sequence: ones_like, triu and arange masks computed from shapes at run time.
(official-vit: q and k are [N,B,H,D] and v [B,H,N,D], so its axes differ per input.)"""


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_shapes_are_fused_and_equal_at_other_sizes(name, exporter, ort_library):
    model, form, axes = DYNAMIC[name]
    dynamic = (axes,) * 3 if axes else ({0: SEQ, 1: BATCH}, {0: SEQ, 1: BATCH}, {0: BATCH, 2: SEQ})
    _check_fused(model, form, exporter, ort_library, dynamic=dynamic, sizes=((1, 9), (3, 4), (2, 6)))


def test_R_input_becomes_the_node_input():
    form = PATTERNS["input-R"]
    graph, report = fuse_with_report(gs.import_onnx(_export(UserAttention(form), _inputs(form), "dynamo")))
    (node,) = fourier_nodes(graph)
    assert report.candidates[0].attributes["R"] == "graph input R"
    assert any(t.name == "R" for t in graph.inputs) and not isinstance(node.inputs[3], gs.Constant)


NEAR_MISSES = {
    "odd-power": (Form(power="3"), "power 3"),
    "non-integer-power": (Form(power="2.5"), "not a positive integer"),
    "max-normaliser": (Form(layout="bhnd", normaliser="max"), "not a sum over the keys"),
    "sum-over-queries": (Form(normaliser="queries"), "does not contract the key axis"),
    "eps-not-constant": (Form(normaliser="eps-input"), "is not a constant"),
    "softmax": (Form(normaliser="softmax"), "softmax"),
    "scaled-scores": (Form(normaliser="scaled"), "scaled by a constant"),
    "per-dim-R": (Form(r="per-dim"), "per-dimension"),
    "not-causal-mask": (Form(causal=True, mask="window"), "not the causal mask"),
}


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_near_miss_is_left_alone_with_reason(name):
    form, reason = NEAR_MISSES[name]
    proto = _export(UserAttention(form), _inputs(form), "dynamo")
    graph, report = fuse_with_report(gs.import_onnx(proto))
    assert not fourier_nodes(graph) and report.fused == 0
    (candidate,) = report.candidates
    assert not candidate.fused and reason in candidate.reason, candidate.reason
    assert any(reason in line for line in report.lines())


def test_fuse_is_a_pure_graph_pass():
    form = Form()
    graph = gs.import_onnx(_export(UserAttention(form), _inputs(form), "dynamo"))
    before = [n.op for n in graph.nodes]
    assert len(fourier_nodes(fuse(graph))) == 1
    assert [n.op for n in graph.nodes] == before
    assert len(fourier_nodes(fuse(fuse(graph)))) == 1
