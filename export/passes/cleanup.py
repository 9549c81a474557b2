"""Cleanup: strip export-time metadata, fold constants where safe, drop dead nodes, sort topologically."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fourierformer import opspec


FOLD_SIZE_LIMIT = 16 << 20
"""Constants larger than this are not folded: e.g. a transposed copy of a tied embedding would double the model."""


def _is_custom(node: gs.Node) -> bool:
    """Nodes of our custom domains: never evaluated by the constant folder."""
    return node.domain in (opspec.DOMAIN, opspec.ORT_DOMAIN)


def cleanup(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` without source-path metadata (so builds are reproducible), folded and sorted."""
    graph = graph.copy()
    for node in graph.nodes:
        node.metadata_props = None
        node.doc_string = None
    graph.doc_string = None
    graph.fold_constants(should_exclude_node=_is_custom, error_ok=False, size_threshold=FOLD_SIZE_LIMIT)
    return graph.cleanup().toposort()
