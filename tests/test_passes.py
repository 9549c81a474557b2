"""Export and graph-surgeon passes: node counts, attributes, dynamic axes, purity, reproducibility."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from export.builder import passes_for, retarget
from export.errors import UserError
from export.onnx_export import export_onnx
from export.op_model import IR_VERSION, portable_op_model
from export.passes import cleanup, decompose, to_fp16, to_onnxruntime, to_tensorrt
from export.passes.custom_op import fourier_nodes
from fourierformer import opspec
from fourierformer.attention import FourierAttention
from fourierformer.configs import get_config
from fourierformer.models import create_model


@pytest.fixture(scope="module")
def lm_export():
    """tiny-lm exported with a distinct R per layer, to see each folded into its own node."""
    config = get_config("tiny-lm")
    model = create_model(config)
    kernels = [m for m in model.modules() if isinstance(m, FourierAttention)]
    with torch.no_grad():
        for i, kernel in enumerate(kernels):
            kernel.paramR.fill_(0.5 + i)
    return config, export_onnx(model, config), [k.paramR.item() for k in kernels]


def _custom_nodes(proto: onnx.ModelProto, domain: str) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type == opspec.OP_TYPE and n.domain == domain]


def test_export_has_one_custom_node_per_layer(lm_export):
    config, proto, _ = lm_export
    nodes = _custom_nodes(proto, opspec.DOMAIN)
    assert len(nodes) == config.n_layer
    for node in nodes:
        assert len(node.input) == len(opspec.INPUTS)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"power": config.power, "eps": pytest.approx(config.eps), "causal": 1}
    assert {(o.domain, o.version) for o in proto.opset_import} >= {(opspec.DOMAIN, opspec.VERSION)}
    onnx.checker.check_model(proto)


def test_export_has_dynamic_batch_and_sequence(lm_export):
    _, proto, _ = lm_export
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]


def test_vit_export_has_dynamic_batch_and_non_causal_nodes():
    config = get_config("tiny-vit")
    proto = export_onnx(create_model(config), config)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    nodes = _custom_nodes(proto, opspec.DOMAIN)
    assert len(nodes) == config.depth
    assert all(onnx.helper.get_attribute_value(a) == 0 for n in nodes for a in n.attribute if a.name == "causal")


def test_to_onnxruntime_folds_each_R(lm_export):
    _, proto, r_values = lm_export
    graph = to_onnxruntime(cleanup(gs.import_onnx(proto)))
    nodes = [n for n in graph.nodes if n.op == opspec.OP_TYPE]
    assert all(n.domain == opspec.ORT_DOMAIN and len(n.inputs) == 3 for n in nodes)
    assert sorted(n.attrs["R"] for n in nodes) == pytest.approx(sorted(r_values))
    assert set(nodes[0].attrs) == {a.name for a in opspec.ATTRIBUTES}
    domains = {d.domain for d in graph.import_domains}
    assert opspec.ORT_DOMAIN in domains and opspec.DOMAIN not in domains
    assert not fourier_nodes(graph)


def test_passes_are_pure(lm_export):
    _, proto, _ = lm_export
    graph = gs.import_onnx(proto)
    before = gs.export_onnx(graph).SerializeToString()
    to_onnxruntime(cleanup(graph))
    assert gs.export_onnx(graph).SerializeToString() == before


def test_cleanup_folds_constants_and_drops_dead_nodes():
    x = gs.Variable("x", np.float32, [2])
    a, b = gs.Constant("a", np.ones(2, np.float32)), gs.Constant("b", np.full(2, 2.0, np.float32))
    folded, y, dead = gs.Variable("ab", np.float32, [2]), gs.Variable("y", np.float32, [2]), gs.Variable("d", np.float32, [2])
    nodes = [gs.Node("Add", "fold", inputs=[a, b], outputs=[folded]),
             gs.Node("Mul", "use", inputs=[x, folded], outputs=[y]),
             gs.Node("Neg", "dead", inputs=[x], outputs=[dead])]
    for node in nodes:
        node.metadata_props = {"pkg.torch.onnx.stack_trace": "/home/user/model.py"}
    graph = cleanup(gs.Graph(nodes, [x], [y], opset=18, ir_version=IR_VERSION))
    assert [n.op for n in graph.nodes] == ["Mul"]
    np.testing.assert_array_equal(graph.nodes[0].inputs[1].values, np.full(2, 3.0, np.float32))
    assert not graph.nodes[0].metadata_props


def test_export_is_reproducible(lm_export):
    config, proto, _ = lm_export
    model = create_model(config)
    passes = passes_for("onnxruntime", "plugin", "fp32")
    assert retarget(export_onnx(model, config), passes).SerializeToString() == \
        retarget(export_onnx(model, config), passes).SerializeToString()


def test_to_tensorrt_names_the_plugin(lm_export):
    _, proto, r_values = lm_export
    graph = to_tensorrt(cleanup(gs.import_onnx(proto)))
    nodes = [n for n in graph.nodes if n.op == opspec.OP_TYPE]
    assert len(nodes) == len(r_values) and all(n.domain == opspec.TENSORRT_DOMAIN for n in nodes)
    assert all(len(n.inputs) == 3 for n in nodes)
    for node in nodes:
        assert node.attrs["plugin_version"] == opspec.PLUGIN_VERSION
        assert node.attrs["plugin_namespace"] == opspec.PLUGIN_NAMESPACE
        assert set(node.attrs) == {a.name for a in opspec.ATTRIBUTES} | {"plugin_version", "plugin_namespace"}
    assert sorted(n.attrs["R"] for n in nodes) == pytest.approx(sorted(r_values))


def _portable_node_graph(d: int | str) -> gs.Graph:
    """One portable FourierAttention node "fa" on q, k, v of head dim ``d`` (a size or a symbol)."""
    q, k, v = (gs.Variable(n, np.float32, ["B", 2, "N", d]) for n in ("q", "k", "v"))
    out = gs.Variable("out", np.float32, ["B", 2, "N", d])
    node = gs.Node(opspec.OP_TYPE, "fa", {"power": 4, "eps": 1e-6, "causal": 0},
                   [q, k, v, gs.Constant("R", np.array(1.0, np.float32))], [out], domain=opspec.DOMAIN)
    return gs.Graph([node], [q, k, v], [out], opset=18)


def test_to_tensorrt_refuses_a_head_dim_above_the_kernel_maximum():
    with pytest.raises(UserError) as caught:
        to_tensorrt(_portable_node_graph(opspec.CUDA_MAX_DIM + 1))
    message = str(caught.value)
    assert "\n" not in message and "'fa'" in message
    assert f"D={opspec.CUDA_MAX_DIM + 1}" in message and f"above {opspec.CUDA_MAX_DIM}" in message


@pytest.mark.parametrize("d", [opspec.CUDA_MAX_DIM, "D"], ids=["max", "symbolic"])
def test_to_tensorrt_accepts_the_maximum_and_symbolic_head_dims(d):
    [node] = [n for n in to_tensorrt(_portable_node_graph(d)).nodes if n.op == opspec.OP_TYPE]
    assert node.domain == opspec.TENSORRT_DOMAIN


def test_only_the_tensorrt_plugin_has_the_head_dim_limit():
    [node] = to_onnxruntime(_portable_node_graph(opspec.CUDA_MAX_DIM + 1)).nodes
    assert node.domain == opspec.ORT_DOMAIN


def _run_time_r_graph(d: int = 8) -> gs.Graph:
    """:func:`_portable_node_graph` with R computed at run time as the fuse pass writes it: |reshape(R_in)|, R_in a
    float32 graph input of shape [1]."""
    graph = _portable_node_graph(d)
    [node] = graph.nodes
    r_in, scalar = gs.Variable("R_in", np.float32, [1]), gs.Variable("R_scalar", np.float32, [])
    node.inputs[3] = gs.Variable("R_abs", np.float32, [])
    no_dims = gs.Constant("no_dims", np.zeros(0, np.int64))
    graph.nodes[:0] = [gs.Node("Reshape", "R_reshape", inputs=[r_in, no_dims], outputs=[scalar]),
                       gs.Node("Abs", "R_abs", inputs=[scalar], outputs=[node.inputs[3]])]
    graph.inputs.append(r_in)
    graph.import_domains = [onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(opspec.DOMAIN, opspec.VERSION)]
    return graph


def test_to_onnxruntime_keeps_a_run_time_R_as_the_fourth_input():
    graph = to_onnxruntime(_run_time_r_graph())
    [node] = [n for n in graph.nodes if n.op == opspec.OP_TYPE]
    assert node.domain == opspec.ORT_DOMAIN and [t.name for t in node.inputs] == ["q", "k", "v", "R_abs"]
    assert set(node.attrs) == {a.name for a in opspec.NODE_ATTRIBUTES}  # no R attribute: the input gives it


def test_to_onnxruntime_gives_a_float16_run_time_R_to_the_op_in_float32():
    graph = to_onnxruntime(to_fp16(_run_time_r_graph()))
    [node] = [n for n in graph.nodes if n.op == opspec.OP_TYPE]
    assert graph.inputs[-1].dtype == np.float16 and node.inputs[0].dtype == np.float16
    r = node.inputs[3]
    assert r.dtype == np.float32 and r.inputs[0].op == "Cast" and r.inputs[0].inputs[0].dtype == np.float16


def test_to_onnxruntime_folds_a_constant_R():
    [node] = to_onnxruntime(_portable_node_graph(8)).nodes
    assert [t.name for t in node.inputs] == ["q", "k", "v"] and node.attrs["R"] == 1.0


def test_to_tensorrt_refuses_a_run_time_R():
    with pytest.raises(UserError) as caught:
        to_tensorrt(_run_time_r_graph())
    message = str(caught.value)
    assert "\n" not in message and "'fa'" in message and "'R_abs'" in message
    assert "TensorRT plugin takes R as a constant" in message
    assert "--backend onnxruntime" in message and "--attention decomposed" in message


@pytest.mark.parametrize("attention, precision, bound", [
    ("plugin", "fp32", 1e-5), ("plugin", "fp16", 1e-3), ("decomposed", "fp32", 1e-5), ("decomposed", "fp16", 1e-3),
])
def test_a_run_time_R_builds_for_onnxruntime_and_runs(ort_library, attention, precision, bound):
    """The build's passes on a run-time R (the op's R input must be float32, or ONNX Runtime refuses the model):
    each R fed matches the float64 oracle, for the op and the decomposed form (which to_tensorrt's refusal
    suggests)."""
    from conftest import assert_not_vacuous, attention_inputs, oracle
    from export.runtime import ort_session
    from export.validate import error_stats

    proto = gs.export_onnx(_run_time_r_graph())
    proto.ir_version = IR_VERSION
    proto = retarget(proto, passes_for("onnxruntime", attention, precision))
    ops = [n for n in proto.graph.node if n.op_type == opspec.OP_TYPE]
    assert [len(n.input) for n in ops] == ([4] if attention == "plugin" else [])
    session = ort_session(proto.SerializeToString(), ort_library if attention == "plugin" else None)
    dtype = np.float16 if precision == "fp16" else np.float32
    for R in (0.25, 2.5, 64.0):  # exact in float16
        inputs = {k: v.astype(dtype) for k, v in attention_inputs(2, 2, 6, 6, 8, R=R, seed=7).items()}
        reference, min_row_sum = oracle({k: v.astype(np.float32) for k, v in inputs.items()}, R, 4, 1e-6, 0)
        assert_not_vacuous(min_row_sum, 1e-6)
        out = session.run(None, {**inputs, "R_in": np.array([-R], dtype)})[0]
        assert out.dtype == dtype and error_stats("out", out, reference).norm_rel <= bound, f"R={R}"


@pytest.mark.parametrize("nq, nk, d, R, power, causal", [
    (1, 1, 1, 1.0, 4, 0), (5, 9, 3, 0.1, 2, 1), (9, 5, 17, 10.0, 8, 1), (16, 16, 64, 1.0, 4, 1),
])
def test_decompose_matches_custom_op_and_oracle(op_session, nq, nk, d, R, power, causal):
    from conftest import assert_not_vacuous, attention_inputs, oracle
    from export.runtime import ort_session
    from export.validate import error_stats

    inputs = attention_inputs(2, 2, nq, nk, d, R=R, seed=nq * nk, spread=1.5 / np.sqrt(power))
    reference, min_row_sum = oracle(inputs, R, power, 1e-6, causal)
    assert_not_vacuous(min_row_sum, 1e-6)
    graph = decompose(gs.import_onnx(portable_op_model(d, {"R": R, "power": power, "causal": causal})))
    assert {n.domain or "" for n in graph.nodes} == {""}
    decomposed = ort_session(gs.export_onnx(graph).SerializeToString(), None).run(None, inputs)[0]
    custom = op_session(R=R, power=power, causal=causal).run(None, inputs)[0]
    assert error_stats("out", decomposed, reference).norm_rel <= 1e-5
    assert error_stats("out", decomposed, custom).norm_rel <= 1e-5


def test_fp16_types_and_float32_islands():
    config = get_config("tiny-vit")
    graph = to_fp16(cleanup(gs.import_onnx(export_onnx(create_model(config), config))))
    assert graph.inputs[0].dtype == np.float16 and graph.outputs[0].dtype == np.float16
    for node in graph.nodes:
        if node.op == "LayerNormalization":
            assert all(t.dtype == np.float32 for t in node.inputs + node.outputs)
        elif node.op == opspec.OP_TYPE:
            assert [t.dtype for t in node.inputs] == [np.float16] * 3 + [np.float32]
            assert node.outputs[0].dtype == np.float16
        elif node.op == "Cast":
            assert node.attrs["to"] in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        else:
            assert all(t.dtype != np.float32 for t in node.inputs + node.outputs), node


@pytest.mark.parametrize("attention", ["plugin", "decomposed"])
@pytest.mark.parametrize("name", ["tiny-lm", "tiny-vit"])
def test_fp16_graph_matches_eager(ort_library, name, attention):
    from export.runtime import ort_session
    from export.validate import error_stats
    from fourierformer.models import example_inputs

    config = get_config(name)
    model = create_model(config)
    proto = retarget(export_onnx(model, config), passes_for("onnxruntime", attention, "fp16"))
    inputs = example_inputs(config, batch=2, seq=None if name == "tiny-vit" else 24)
    feeds = {k: v.numpy().astype(np.float16) if v.is_floating_point() else v.numpy() for k, v in inputs.items()}
    session = ort_session(proto.SerializeToString(), ort_library if attention == "plugin" else None)
    out = session.run(None, feeds)[0]
    with torch.no_grad():
        expected = model(**inputs).numpy()
    assert out.dtype == np.float16
    assert error_stats("logits", out, expected).norm_rel <= 5e-3


def test_fp16_rejects_weights_out_of_range():
    x = gs.Variable("x", np.float32, [2])
    y = gs.Variable("y", np.float32, [2])
    graph = gs.Graph([gs.Node("Mul", "m", inputs=[x, gs.Constant("big", np.full(2, 1e6, np.float32))], outputs=[y])],
                     [x], [y], opset=18, ir_version=IR_VERSION)
    with pytest.raises(ValueError, match="big exceeds the float16 range"):
        to_fp16(graph)


EXPORTED_OPS = {
    # GELU is Erf-based (two per ViT block: x * (1 + erf(x / sqrt 2)) / 2); the LM's FFN is ReLU (post-LN,
    # official MemTransformerLM); four LogSoftmax: the adaptive head and its three tail clusters.
    "tiny-vit": {"Add": 15, "Concat": 2, "Conv": 1, "Div": 2, "Erf": 2, "Expand": 1, "Gather": 1, "Gemm": 1,
                 "LayerNormalization": 5, "MatMul": 8, "Mul": 4, "Reshape": 5, "Shape": 1, "Slice": 6, "Squeeze": 6,
                 "Transpose": 5, "fourierformer::FourierAttention": 2},
    "tiny-lm": {"Add": 14, "Concat": 4, "Gather": 1, "LayerNormalization": 4, "LogSoftmax": 4, "MatMul": 14, "Mul": 1,
                "Relu": 2, "Reshape": 8, "Shape": 2, "Slice": 10, "Transpose": 9,
                "fourierformer::FourierAttention": 2},
}
"""The exported op types of the small models, pinned: a change to a model's definition (GELU for ReLU, a lost
LayerNorm) moves the eager model and the export together, so parity alone cannot see it."""


@pytest.mark.parametrize("name", sorted(EXPORTED_OPS))
def test_exported_op_types_are_pinned(name):
    config = get_config(name)
    proto = export_onnx(create_model(config), config)
    ops = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    assert dict(ops) == EXPORTED_OPS[name]
