"""Retarget portable FourierAttention nodes to a backend's custom-op form.

to_onnxruntime: the domain of ``libfourierformer_ort.so``; a constant R is folded into an attribute (inputs
q, k, v), an R computed at run time (e.g. from a graph input of a fused user model) stays the fourth input, in
float32.
to_tensorrt: the node TensorRT's ONNX parser maps to the plugin in ``libfourierformer_trt.so`` (op type =
plugin name, attributes = plugin fields, plus ``plugin_version`` and ``plugin_namespace``); R must be a
constant, and a static head dim above what the plugin's CUDA kernel runs is refused before any build.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from export.errors import UserError
from fourierformer import opspec


def constant_r(node: gs.Node) -> float | None:
    """The node's R input as a Python float; None if it is computed at run time, ValueError if it is a constant of
    more than one element."""
    r = node.inputs[3]
    if not isinstance(r, gs.Constant):
        return None
    if r.values.size != 1:
        raise ValueError(f"{node.name}: R must be a scalar, got the constant {r.name} of shape {list(r.shape)}")
    return float(np.asarray(r.values).reshape(()))


def fourier_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Every portable-form FourierAttention node in ``graph``."""
    return [n for n in graph.nodes if n.op == opspec.OP_TYPE and n.domain == opspec.DOMAIN]


def check_plugin_head_dim(node: gs.Node) -> None:
    """UserError if q, k or v has a static head dim D (last axis) above the CUDA kernel's; a symbolic D passes."""
    for tensor in node.inputs[:3]:
        dim = tensor.shape[-1] if tensor.shape else None
        if isinstance(dim, (int, np.integer)) and dim > opspec.CUDA_MAX_DIM:
            raise UserError(f"FourierAttention node {node.name!r}: head dim D={dim} of {tensor.name!r} is above "
                            f"{opspec.CUDA_MAX_DIM}, the most the TensorRT plugin's CUDA kernel supports "
                            "(use --attention decomposed)")


def _fold_r(node: gs.Node, r: float, extra_attrs: dict[str, str]) -> None:
    """Make ``node`` take inputs (q, k, v) with R, every attribute and ``extra_attrs`` as attributes."""
    node.attrs = {**opspec.check_attributes({**node.attrs, "R": r}), **extra_attrs}
    node.inputs = node.inputs[:3]


def _float32_r(graph: gs.Graph, node: gs.Node) -> None:
    """Make ``node``'s R input float32 where it may not be (to_fp16 makes a run-time R float16): a Cast just
    before the node."""
    r = node.inputs[3]
    if r.dtype == np.float32:
        return
    cast = gs.Variable(f"{node.name}/R_f32", dtype=np.float32, shape=r.shape)
    graph.nodes.insert(graph.nodes.index(node),
                       gs.Node("Cast", f"{node.name}/Cast_R", {"to": onnx.TensorProto.FLOAT}, [r], [cast]))
    node.inputs[3] = cast


def _ort_node(graph: gs.Graph, node: gs.Node) -> None:
    """The ONNX Runtime form of ``node``: R folded if constant, else kept as the (float32) fourth input."""
    r = constant_r(node)
    if r is not None:
        _fold_r(node, r, {})
        return
    node.attrs = opspec.check_attributes(node.attrs, opspec.NODE_ATTRIBUTES)
    _float32_r(graph, node)


def _tensorrt_node(graph: gs.Graph, node: gs.Node) -> None:
    """The TensorRT plugin form of ``node``; UserError where the plugin cannot run it."""
    check_plugin_head_dim(node)
    r = constant_r(node)
    if r is None:
        raise UserError(f"FourierAttention node {node.name!r}: R ({node.inputs[3].name!r}) is computed at run time, "
                        "but the TensorRT plugin takes R as a constant (use --backend onnxruntime, or --attention "
                        "decomposed)")
    _fold_r(node, r, {"plugin_version": opspec.PLUGIN_VERSION, "plugin_namespace": opspec.PLUGIN_NAMESPACE})


def _retarget(graph: gs.Graph, domain: str, version: int, retarget_node: Callable[[gs.Graph, gs.Node], None],
              ) -> gs.Graph:
    """A copy of ``graph`` with each portable node moved to ``domain`` and given its inputs and attributes there."""
    graph = graph.copy()
    for node in fourier_nodes(graph):
        retarget_node(graph, node)
        node.domain = domain
    graph.import_domains = [d for d in graph.import_domains or [] if d.domain != opspec.DOMAIN]
    graph.import_domains.append(onnx.helper.make_opsetid(domain, version))
    return graph.cleanup()


def to_onnxruntime(graph: gs.Graph) -> gs.Graph:
    """FourierAttention nodes in the ONNX Runtime library's domain and version."""
    return _retarget(graph, opspec.ORT_DOMAIN, opspec.ORT_VERSION, _ort_node)


def to_tensorrt(graph: gs.Graph) -> gs.Graph:
    """FourierAttention nodes as TensorRT plugin nodes (fields, plugin_version, plugin_namespace)."""
    return _retarget(graph, opspec.TENSORRT_DOMAIN, 1, _tensorrt_node)
