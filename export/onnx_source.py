"""A user's ONNX file as a build source: read it as untrusted data, fuse its Fourier attention, describe its inputs.

The file is read once (its sha256 is of the bytes used); tensors it stores outside itself are loaded only from
files in its own folder; its Fourier-attention subgraphs become FourierAttention nodes (export/passes/fuse.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper

from export.errors import UserError, one_line
from export.passes import FuseReport, fuse_with_report
from export.passes.custom_op import fourier_nodes

log = logging.getLogger(__name__)

MAX_ONNX_BYTES = 2 << 30
"""Largest model file read (protobuf's limit for one message); weights beyond it belong in external data."""


@dataclass(frozen=True)
class OnnxSource:
    """The fused model, the source file's sha256, what the fuse pass found, and how many FourierAttention nodes
    the model now has (those fused, and any the file held already: an export of fourierformer.FourierAttention)."""

    proto: onnx.ModelProto
    sha256: str
    report: FuseReport
    layers: int


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the graph holds: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            yield from ([attribute.t] if attribute.HasField("t") else [])
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(sub)


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Load the tensors stored outside the model, each from a plain relative file in the model's folder;
    UserError for one that names anything else or a missing file."""
    folder = path.parent
    for tensor in _tensors(proto.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        name = PurePosixPath(location)
        resolved = (folder / location).resolve()
        if not location or name.is_absolute() or ".." in name.parts or "\\" in location \
                or not resolved.is_relative_to(folder.resolve()):
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, outside the model's "
                            "folder (refused)")
        if not resolved.is_file():
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is missing")
        try:
            external_data_helper.load_external_data_for_tensor(tensor, str(folder))
        except Exception as exc:  # a short file, a bad offset
            raise UserError(f"{path}: cannot read tensor {tensor.name!r} from {location!r}: {one_line(exc)}") from exc
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def read_onnx(path: Path) -> tuple[onnx.ModelProto, str]:
    """The model in ``path`` with its external data loaded, and the sha256 of the file; UserError if it is not
    a readable ONNX model."""
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise UserError(f"{path} is larger than {MAX_ONNX_BYTES >> 30} GiB: keep its weights in external data")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise UserError(f"{path} is not an ONNX model: {one_line(exc)}") from exc
    if not proto.graph.node:
        raise UserError(f"{path} is not an ONNX model: its graph has no nodes")
    _load_external_data(proto, path)
    return proto, hashlib.sha256(data).hexdigest()


def fused_source(path: Path) -> OnnxSource:
    """``path`` read and fused: one FourierAttention node per attention layer the pass can prove."""
    proto, sha256 = read_onnx(path)
    try:
        graph, report = fuse_with_report(gs.import_onnx(proto))
        fused = gs.export_onnx(graph)
    except Exception as exc:  # graph-surgeon and shape inference on a malformed graph
        raise UserError(f"{path}: cannot read its graph: {one_line(exc)}") from exc
    fused.ir_version = proto.ir_version
    for line in report.lines():
        log.debug("fuse: %s", line)
    layers = len(fourier_nodes(graph))
    if layers == 0:
        log.warning("%s: no Fourier attention found to fuse (%d candidates; `build-engine --onnx %s --explain` "
                    "says why): the artifact works, without our kernel", path, len(report.candidates), path)
    else:
        log.info("%s: %d attention layer(s) as FourierAttention nodes (%d fused here)", path, layers, report.fused)
    return OnnxSource(fused, sha256, report, layers)


LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
"""Ops that move an integer input's values without changing them, on the way to an embedding lookup."""


def index_bounds(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """For each integer graph input whose values (through layout ops only) index a Gather on axis 0 of an
    initializer (an embedding lookup), the rows they may name: [0, rows - 1] of the smallest such table."""
    rows = {t.name: t.dims[0] for t in proto.graph.initializer if t.dims}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    bounds: dict[str, list[int]] = {}
    for value in proto.graph.input:
        if value.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        reached, frontier, tables = {value.name}, [value.name], []
        while frontier:
            for node in consumers.get(frontier.pop(), []):
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if node.op_type == "Gather" and axis == 0 and node.input[1] in reached and node.input[0] in rows:
                    tables.append(rows[node.input[0]])
                elif node.op_type in LAYOUT_OPS and node.input[0] in reached and node.output[0] not in reached:
                    reached.add(node.output[0])
                    frontier.append(node.output[0])
        if tables:
            bounds[value.name] = [0, min(tables) - 1]
    return bounds


def dynamic_dims(proto: onnx.ModelProto) -> list[str]:
    """The named (dynamic) dimensions of the graph's inputs, in order of first appearance."""
    names: list[str] = []
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param not in names:
                names.append(dim.dim_param)
            elif not dim.dim_param and dim.dim_value < 1:
                raise UserError(f"input {value.name!r} has an axis of unknown size with no name: export it with "
                                "named dynamic axes or a fixed size")
    return names
