"""to_onnxruntime: retarget FourierAttention nodes to the ONNX Runtime custom-op library's form."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

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


def to_onnxruntime(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` whose FourierAttention nodes use the ORT domain, with R folded into an attribute."""
    graph = graph.copy()
    for node in fourier_nodes(graph):
        attrs = opspec.check_attributes({**node.attrs, "R": constant_r(node)})
        node.domain = opspec.ORT_DOMAIN
        node.attrs = attrs
        node.inputs = node.inputs[:3]
    graph.import_domains = [d for d in graph.import_domains or [] if d.domain != opspec.DOMAIN]
    graph.import_domains.append(onnx.helper.make_opsetid(opspec.ORT_DOMAIN, opspec.ORT_VERSION))
    return graph.cleanup()
