"""decompose: each FourierAttention node becomes standard ONNX ops with the same semantics.

The result runs on stock ONNX Runtime and on any TensorRT (TensorRT-RTX included, which cannot hold
plugins). Like the custom kernels it computes in float32 whatever the input type, and like the eager
reference it materializes the [B,H,Nq,Nk,D] tensor, so it is a portable fallback, not a fast path:

    x = R * (q[..., :, None, :] - k[..., None, :, :])
    s = sin(x) / x  (1 where x == 0)
    w = prod_d (s * s) ** (power / 2)          [masked to 0 above the bottom-right diagonal if causal]
    out = (w @ v) / (sum_j w + eps)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnx
from onnx import TensorProto

from export.passes.custom_op import fourier_nodes
from fourierformer import opspec

class _Builder:
    """Appends nodes to a graph, naming tensors after the node being decomposed."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph, self.prefix, self.count = graph, prefix, 0

    def __call__(self, op: str, *inputs: gs.Tensor, dtype=np.float32, out: gs.Variable | None = None,
                 **attrs) -> gs.Variable:
        self.count += 1
        out = out or gs.Variable(f"{self.prefix}/{op}_{self.count}", dtype=dtype)
        self.graph.nodes.append(gs.Node(op, f"{self.prefix}/{op}_{self.count}", attrs, list(inputs), [out]))
        return out

    def const(self, name: str, value) -> gs.Constant:
        return gs.Constant(f"{self.prefix}/{name}", np.asarray(value))


def _float32(b: _Builder, tensor: gs.Tensor) -> gs.Tensor:
    """``tensor`` cast to float32 unless it already is."""
    if isinstance(tensor, gs.Constant):
        return b.const(f"{tensor.name}_f32", np.asarray(tensor.values, np.float32))
    return tensor if tensor.dtype == np.float32 else b("Cast", tensor, to=TensorProto.FLOAT)


def _visible(b: _Builder, q: gs.Tensor, k: gs.Tensor) -> gs.Variable:
    """Boolean [Nq, Nk] mask, True where j <= i + (Nk - Nq)."""
    nq = b("Shape", q, dtype=np.int64, start=2, end=3)
    nk = b("Shape", k, dtype=np.int64, start=2, end=3)
    zero, one = b.const("zero_i64", np.int64(0)), b.const("one_i64", np.int64(1))
    rows = b("Range", zero, b("Squeeze", nq, dtype=np.int64), one, dtype=np.int64)
    cols = b("Range", zero, b("Squeeze", nk, dtype=np.int64), one, dtype=np.int64)
    last_visible = b("Add", b("Unsqueeze", rows, b.const("axis1", [1]), dtype=np.int64), b("Sub", nk, nq, dtype=np.int64),
                     dtype=np.int64)
    return b("LessOrEqual", b("Unsqueeze", cols, b.const("axis0", [0]), dtype=np.int64), last_visible, dtype=np.bool_)


def _decompose_node(graph: gs.Graph, node: gs.Node) -> None:
    """Replace one portable FourierAttention node by its standard-op expansion."""
    attrs = opspec.check_attributes(node.attrs, opspec.NODE_ATTRIBUTES)
    b = _Builder(graph, node.name or "FourierAttention")
    q_in, k_in, v_in, r_in = node.inputs
    q, k, v, r = (_float32(b, t) for t in (q_in, k_in, v_in, r_in))
    x = b("Mul", b("Sub", b("Unsqueeze", q, b.const("axis3", [3])), b("Unsqueeze", k, b.const("axis2", [2]))), r)
    is_zero = b("Equal", x, b.const("zero", np.float32(0)), dtype=np.bool_)
    one = b.const("one", np.float32(1))
    safe = b("Where", is_zero, one, x)
    sinc = b("Where", is_zero, one, b("Div", b("Sin", safe), safe))
    squared = b("Mul", sinc, sinc)
    if attrs["power"] > 2:
        squared = b("Pow", squared, b.const("half_power", np.float32(attrs["power"] // 2)))
    w = b("ReduceProd", squared, b.const("last_axis", [-1]), keepdims=0)
    if attrs["causal"]:
        w = b("Where", _visible(b, q_in, k_in), w, b.const("zero_w", np.float32(0)))
    total = b("Add", b("ReduceSum", w, b.const("sum_axis", [-1]), keepdims=1), b.const("eps", np.float32(attrs["eps"])))
    result = node.outputs[0]
    node.outputs.clear()
    if result.dtype in (None, np.float32):
        b("Div", b("MatMul", w, v), total, out=result)
    else:
        b("Cast", b("Div", b("MatMul", w, v), total), out=result, to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(result.dtype)))


def decompose(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` with every portable FourierAttention node expanded into standard ONNX ops."""
    graph = graph.copy()
    for node in fourier_nodes(graph):
        _decompose_node(graph, node)
    graph.import_domains = [d for d in graph.import_domains or [] if d.domain != opspec.DOMAIN] or None
    return graph.cleanup().toposort()
