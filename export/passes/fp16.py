"""to_fp16: a strongly typed float16 network, for TensorRT 11 and TensorRT-RTX (which have no FP16 flag).

Inputs, weights and activations become float16, except where accuracy needs float32:
* LayerNormalization runs in float32 (inputs cast up, float32 scale and bias, output cast down);
* FourierAttention keeps R in float32 (it is folded into a float attribute later) and computes in
  float32 inside the custom kernels or the decomposed form; its inputs and outputs are float16.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from fourierformer import opspec

FLOAT16_MAX = float(np.finfo(np.float16).max)


def _stays_float32(node: gs.Node, index: int) -> bool:
    """Whether input ``index`` of ``node`` keeps float32: LayerNorm scale/bias, FourierAttention's R.

    Decided per use, not per tensor: the exporter deduplicates equal constants (R = 1.0 may also be GELU's 1).
    """
    if node.op == "LayerNormalization":
        return index > 0
    return node.op == opspec.OP_TYPE and node.domain == opspec.DOMAIN and index == 3


def _cast(graph: gs.Graph, tensor: gs.Tensor, to: int, dtype, name: str) -> gs.Variable:
    """Append a Cast of ``tensor`` and return its output."""
    out = gs.Variable(name, dtype=dtype, shape=tensor.shape)
    graph.nodes.append(gs.Node("Cast", name, {"to": to}, [tensor], [out]))
    return out


def _layernorm_in_float32(graph: gs.Graph, node: gs.Node) -> None:
    """Wrap a (now float16) LayerNormalization in casts so that it computes in float32."""
    x, out = node.inputs[0], node.outputs[0]
    node.inputs[0] = _cast(graph, x, TensorProto.FLOAT, np.float32, f"{node.name}/input_f32")
    out_f32 = gs.Variable(f"{node.name}/output_f32", dtype=np.float32, shape=out.shape)
    node.outputs[0] = out_f32
    graph.nodes.append(gs.Node("Cast", f"{node.name}/output_f16", {"to": TensorProto.FLOAT16}, [out_f32], [out]))


def _fp16_constant(tensor: gs.Constant) -> gs.Constant:
    """A float16 copy of a float32 constant, named apart from it (a deduplicated constant may keep float32 in
    another use, e.g. a zero LayerNorm bias equal to a zero Linear bias); ValueError if a value does not fit."""
    values = np.asarray(tensor.values)
    if values.size and np.abs(values).max() > FLOAT16_MAX:
        raise ValueError(f"weight {tensor.name} exceeds the float16 range (max |value| {np.abs(values).max():.3g})")
    return gs.Constant(f"{tensor.name}_fp16", values.astype(np.float16))


def to_fp16(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` computing in float16 (see the module docstring); ValueError if a weight overflows."""
    graph = graph.copy()
    converted: dict[int, gs.Constant] = {}
    for node in list(graph.nodes):
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32 and not _stays_float32(node, i):
                if id(tensor) not in converted:
                    converted[id(tensor)] = _fp16_constant(tensor)
                node.inputs[i] = converted[id(tensor)]
        for tensor in node.outputs:
            if tensor.dtype == np.float32:
                tensor.dtype = np.float16
        if node.op == "Cast" and node.attrs.get("to") == TensorProto.FLOAT:
            node.attrs["to"] = TensorProto.FLOAT16
        elif node.op == "ConstantOfShape" and "value" in node.attrs and node.attrs["value"].values.dtype == np.float32:
            node.attrs["value"] = _fp16_constant(node.attrs["value"])
        elif node.op == "LayerNormalization":
            _layernorm_in_float32(graph, node)
    for tensor in graph.inputs:
        if tensor.dtype == np.float32:
            tensor.dtype = np.float16
    return graph.cleanup().toposort()
