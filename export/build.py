"""build-engine: model -> ONNX -> backend passes -> smoke run -> artifact directory with manifest."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from export import plugin_library
from export.artifact import Manifest, TensorInfo, sha256_file, staging_directory, write_manifest
from export.errors import UserError
from export.onnx_export import MAX_BATCH, OPSET, export_onnx
from export.passes import PIPELINES
from export.runtime import ort_session, run
from fourierformer.configs import LMConfig, ModelConfig, config_to_dict, get_config
from fourierformer.models import create_model, example_inputs, load_checkpoint

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime",)
"""Backends this build can target; ``auto`` picks the best one available."""
PRECISIONS = ("fp32",)
ONNX_FILE = "model.onnx"
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime-gpu", "onnx-graphsurgeon", "polygraphy", "fourierformer-deploy")


@dataclass(frozen=True)
class BuildOptions:
    """What to build and where."""

    model: str
    out: Path
    backend: str = "auto"
    precision: str = "fp32"
    checkpoint: Path | None = None
    seed: int = 0
    opset: int = OPSET


def resolve_backend(name: str) -> str:
    """The concrete backend for ``name`` (``auto``: the first available in :data:`BACKENDS`)."""
    if name == "auto":
        return BACKENDS[0]
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    return name


def load_model(name: str, checkpoint: Path | None, seed: int) -> tuple[ModelConfig, torch.nn.Module]:
    """The named model with its weights from ``checkpoint``, or random ones from ``seed``."""
    try:
        config = get_config(name)
    except KeyError as exc:
        raise UserError(exc.args[0]) from exc
    model = create_model(config, seed)
    if checkpoint is not None:
        try:
            load_checkpoint(model, checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from exc
    return config, model


def _versions() -> dict[str, str]:
    """Installed versions of the packages that shape an artifact."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _tensor_infos(values: list[onnx.ValueInfoProto]) -> list[TensorInfo]:
    """Name, numpy dtype and shape (dim names for dynamic axes) of graph inputs or outputs."""
    return [
        TensorInfo(
            v.name,
            onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def _dynamic_ranges(config: ModelConfig) -> dict[str, list[int]]:
    """Allowed range of each dynamic dimension."""
    ranges = {"batch": [1, MAX_BATCH]}
    if isinstance(config, LMConfig):
        ranges["seq"] = [1, config.context]
    return ranges


def retarget(proto: onnx.ModelProto, backend: str) -> onnx.ModelProto:
    """Run the backend's pass pipeline on an exported model."""
    graph = gs.import_onnx(proto)
    for graph_pass in PIPELINES[backend]:
        log.debug("pass %s", graph_pass.__name__)
        graph = graph_pass(graph)
    result = gs.export_onnx(graph)
    result.ir_version = proto.ir_version
    onnx.checker.check_model(result)
    return result


def build_engine(options: BuildOptions) -> Manifest:
    """Build the artifact directory ``options.out`` atomically; returns its manifest."""
    backend = resolve_backend(options.backend)
    if options.precision not in PRECISIONS:
        raise UserError(f"precision {options.precision!r} is not supported by {backend}; choose: {', '.join(PRECISIONS)}")
    steps = 5
    log.info("[1/%d] building plugin library", steps)
    library = plugin_library.ort_library()
    log.info("[2/%d] creating model %s", steps, options.model)
    config, model = load_model(options.model, options.checkpoint, options.seed)
    log.info("[3/%d] exporting to ONNX (opset %d)", steps, options.opset)
    proto = retarget(export_onnx(model, config, options.opset), backend)
    with staging_directory(options.out) as staging:
        onnx.save(proto, staging / ONNX_FILE)
        shutil.copy2(library, staging / library.name)
        log.info("[4/%d] smoke-running the model in %s", steps, backend)
        session = ort_session(staging / ONNX_FILE, staging / library.name)
        weights = ({"checkpoint": str(options.checkpoint.resolve()), "sha256": sha256_file(options.checkpoint)}
                   if options.checkpoint else {"seed": options.seed})
        manifest = Manifest(
            model=options.model, config=config_to_dict(config), weights=weights, backend=backend,
            precision=options.precision, onnx_file=ONNX_FILE,
            inputs=_tensor_infos(list(proto.graph.input)), outputs=_tensor_infos(list(proto.graph.output)),
            dynamic_ranges=_dynamic_ranges(config), versions=_versions(), plugin_library=library.name,
        )
        feeds = {k: v.numpy() for k, v in example_inputs(config, batch=1).items()}
        outputs = run(session, manifest, feeds)
        if not all(np.isfinite(o).all() for o in outputs.values()):
            raise UserError("the built model produced non-finite outputs on random inputs")
        log.info("[5/%d] writing %s", steps, options.out)
        write_manifest(staging, manifest)
    return manifest
