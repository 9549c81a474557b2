"""Retarget portable FourierAttention nodes to a backend's custom-op form: R folded into an attribute.

to_onnxruntime: the domain of ``libfourierformer_ort.so``.
to_tensorrt: the node TensorRT's ONNX parser maps to the plugin in ``libfourierformer_trt.so`` (op type =
plugin name, attributes = plugin fields, plus ``plugin_version`` and ``plugin_namespace``); a static head dim
above what the plugin's CUDA kernel runs is refused before any build.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from export.errors import UserError
from fourierformer import opspec


def constant_r(node: gs.Node) -> float:
    """The node's R input as a Python float; ValueError if it is not a constant scalar."""
    r = node.inputs[3]
    if not isinstance(r, gs.Constant) or r.values.size != 1:
        raise ValueError(f"{node.name}: R must be a constant scalar to fold into an attribute, got {r}")
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


def _retarget(graph: gs.Graph, domain: str, version: int, extra_attrs: dict[str, str]) -> gs.Graph:
    """A copy of ``graph`` with each portable node moved to ``domain``, inputs (q, k, v), R an attribute."""
    graph = graph.copy()
    for node in fourier_nodes(graph):
        node.attrs = {**opspec.check_attributes({**node.attrs, "R": constant_r(node)}), **extra_attrs}
        node.domain = domain
        node.inputs = node.inputs[:3]
    graph.import_domains = [d for d in graph.import_domains or [] if d.domain != opspec.DOMAIN]
    graph.import_domains.append(onnx.helper.make_opsetid(domain, version))
    return graph.cleanup()


def to_onnxruntime(graph: gs.Graph) -> gs.Graph:
    """FourierAttention nodes in the ONNX Runtime library's domain and version."""
    return _retarget(graph, opspec.ORT_DOMAIN, opspec.ORT_VERSION, {})


def to_tensorrt(graph: gs.Graph) -> gs.Graph:
    """FourierAttention nodes as TensorRT plugin nodes (fields, plugin_version, plugin_namespace)."""
    for node in fourier_nodes(graph):
        check_plugin_head_dim(node)
    return _retarget(graph, opspec.TENSORRT_DOMAIN, 1,
                     {"plugin_version": opspec.PLUGIN_VERSION, "plugin_namespace": opspec.PLUGIN_NAMESPACE})
