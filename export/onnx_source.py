"""A user's ONNX file as a build source: read it as untrusted data, fuse its Fourier attention, describe its inputs.

The file is read once, and its sha256 covers the bytes used (the file's, then each external tensor's); tensors it
stores outside itself are loaded only from files in its own folder; its Fourier-attention subgraphs become
FourierAttention nodes (export/passes/fuse.py).
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

from export.artifact import DTYPES, Manifest, TensorInfo
from export.errors import UserError, one_line
from export.options import MAX_BATCH, Profiles
from export.passes import FuseReport, fuse_with_report
from export.passes.custom_op import fourier_nodes

log = logging.getLogger(__name__)

MAX_ONNX_BYTES = (1 << 31) - 1
"""Largest model read, its external data included: protobuf's limit for one message (larger models are not
supported yet)."""


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


def _external_file(tensor: onnx.TensorProto, path: Path) -> Path:
    """The file in the model's folder that holds ``tensor``'s data; UserError if it names anything else."""
    location = {e.key: e.value for e in tensor.external_data}.get("location", "")
    name, folder = PurePosixPath(location), path.parent
    if not location or "\0" in location or "\\" in location or name.is_absolute() or ".." in name.parts \
            or not (folder / location).resolve().is_relative_to(folder.resolve()):
        raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, outside the model's "
                        "folder (refused)")
    if not (folder / location).is_file():
        raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is missing")
    return folder / location


def _load_external_data(proto: onnx.ModelProto, path: Path, budget: int, digest: hashlib._Hash) -> None:
    """Load the tensors stored outside the model, each from a plain relative file in the model's folder, at most
    ``budget`` bytes in all, each tensor's location and bytes added to ``digest``; UserError for one that names
    anything else, a missing or short file, or too much."""
    for tensor in _tensors(proto.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = _external_file(tensor, path)
        try:
            external_data_helper.load_external_data_for_tensor(tensor, str(path.parent))
        except Exception as exc:  # a short file, a bad offset
            raise UserError(f"{path}: cannot read tensor {tensor.name!r} from {location.name}: "
                            f"{one_line(exc)}") from exc
        digest.update(location.name.encode() + b"\0" + tensor.raw_data)
        budget -= len(tensor.raw_data)
        if budget < 0:
            raise UserError(f"{path}: the model and its external data are larger than {MAX_ONNX_BYTES >> 20} MiB "
                            "(models over 2 GiB are not supported yet)")
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def read_onnx(path: Path) -> tuple[onnx.ModelProto, str]:
    """The model in ``path`` with its external data loaded, and its sha256: of the file's bytes, followed by each
    external tensor's file name and bytes (so, for a model without external data, the file's sha256); UserError
    if it is not a valid ONNX model."""
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise UserError(f"{path} is larger than {MAX_ONNX_BYTES >> 20} MiB (models over 2 GiB are not supported yet)")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise UserError(f"{path} is not an ONNX model: {one_line(exc)}") from exc
    if not proto.graph.node:
        raise UserError(f"{path} is not an ONNX model: its graph has no nodes")
    digest = hashlib.sha256(data)
    _load_external_data(proto, path, MAX_ONNX_BYTES - len(data), digest)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{path} is not a valid ONNX model: {one_line(exc)}") from exc
    return proto, digest.hexdigest()


def fused_source(path: Path) -> OnnxSource:
    """``path`` read and fused: one FourierAttention node per attention layer the pass can prove."""
    proto, sha256 = read_onnx(path)
    try:
        graph, report = fuse_with_report(gs.import_onnx(proto))
        fused = gs.export_onnx(graph)
    except Exception as exc:  # graph-surgeon and shape inference on a malformed graph
        raise UserError(f"{path}: cannot read its graph: {one_line(exc)}") from exc
    fused.ir_version = proto.ir_version
    return OnnxSource(fused, sha256, report, len(fourier_nodes(graph)))


LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"})
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
                if node.op_type == "Gather" and axis == 0 and len(node.input) == 2 and node.input[1] in reached \
                        and node.input[0] in rows:
                    tables.append(rows[node.input[0]])
                elif node.op_type in LAYOUT_OPS and node.input and node.output and node.input[0] in reached \
                        and node.output[0] not in reached:
                    reached.add(node.output[0])
                    frontier.append(node.output[0])
        if tables:
            bounds[value.name] = [0, min(tables) - 1]
    return bounds


def dynamic_ranges(proto: onnx.ModelProto) -> Profiles:
    """Each named (dynamic) dimension of the graph's inputs, in order of first appearance, with the range a
    user's file gets: (1, 1, MAX_BATCH), the file saying none."""
    return {name: (1, 1, MAX_BATCH) for name in _dynamic_dims(proto)}


def _dynamic_dims(proto: onnx.ModelProto) -> list[str]:
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


def _dtype(value: onnx.ValueInfoProto) -> str:
    """The numpy dtype name of a graph input or output; UserError unless it is a tensor of a type artifacts take."""
    kind = value.type.WhichOneof("value")
    elem = value.type.tensor_type.elem_type
    try:
        name = onnx.helper.tensor_dtype_to_np_dtype(elem).name if kind == "tensor_type" else kind
    except (KeyError, TypeError, ValueError):
        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
    if name not in DTYPES:
        raise UserError(f"{value.name!r} is a {name}: artifact inputs and outputs are tensors of "
                        f"{', '.join(DTYPES)}")
    return name


def tensor_infos(values: list[onnx.ValueInfoProto], bounds: dict[str, list[int]] | None = None) -> list[TensorInfo]:
    """Name, numpy dtype and shape (dim names for dynamic axes) of graph inputs or outputs, with value bounds."""
    return [TensorInfo(v.name, _dtype(v), [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                       (bounds or {}).get(v.name)) for v in values]


def describe_onnx(path: Path) -> tuple[onnx.ModelProto, Manifest]:
    """An ONNX file, read (read_onnx), and described as an artifact's manifest would describe it (inputs, outputs,
    dynamic dimensions, integer input bounds; nothing fused), so that runtime.random_feeds can make its inputs."""
    proto, sha256 = read_onnx(path)
    return proto, Manifest(model=path.stem, config=None, weights={"onnx": str(path.resolve()), "sha256": sha256},
                           backend="onnxruntime", precision="fp32", attention="decomposed", onnx_file=path.name,
                           inputs=tensor_infos(list(proto.graph.input), index_bounds(proto)),
                           outputs=tensor_infos(list(proto.graph.output)),
                           dynamic_ranges={name: [low, high] for name, (low, _, high) in dynamic_ranges(proto).items()},
                           versions={}, fused_layers=0)
