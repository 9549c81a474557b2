"""build-engine: model -> ONNX -> backend passes -> smoke run -> artifact directory with manifest."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from export import cpu_kernel, plugin_library
from export.artifact import Manifest, TensorRTInfo, check_manifest, check_replaceable, staging_directory, write_manifest
from export.errors import UserError, one_line
from export.onnx_export import export_onnx
from export.options import (ATTENTIONS, BACKENDS, BUILT_DIR, MAX_BATCH, PRECISIONS, BuildOptions, Profiles,
                            check_applicable, default_timing_cache)
from export.passes import GraphPass, cleanup, decompose, to_fp16, to_onnxruntime, to_tensorrt
from export.onnx_source import dynamic_ranges, fused_source, index_bounds, tensor_infos
from export.runtime import Artifact, ort_session, random_feeds
from export.tensorrt_backend import (check_compute_capabilities, gpu_missing_reason, installed_flavour,
                                     load_tensorrt, plugin_tensorrt_version)
from export.tensorrt_backend import build_engine as build_tensorrt_engine
from fourierformer.checkpoints import CheckpointError, load_weights, read_checkpoint, resolve_config
from fourierformer.configs import LMConfig, ModelConfig, config_to_dict, get_config
from fourierformer.models import create_model

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "onnx-graphsurgeon", "polygraphy",
            "tensorrt", "tensorrt-rtx", "fourierformer-deploy")


def resolve_backend(name: str) -> str:
    """The concrete backend: ``auto`` is tensorrt where a TensorRT runtime can run engines, else onnxruntime."""
    if name == "auto":
        return "tensorrt" if installed_flavour() == "tensorrt" and gpu_missing_reason() is None else "onnxruntime"
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    return name


def resolve_attention(backend: str, attention: str) -> str:
    """``auto`` is the plugin, except on TensorRT-RTX, which holds no plugins and gets the decomposed form."""
    rtx = backend == "tensorrt" and installed_flavour() == "tensorrt_rtx"
    if attention == "auto":
        return "decomposed" if rtx else "plugin"
    if attention not in ATTENTIONS:
        raise UserError(f"unknown attention form {attention!r}; choose one of: auto, {', '.join(ATTENTIONS)}")
    if attention == "plugin" and rtx:
        raise UserError("TensorRT-RTX cannot hold custom plugins: use --attention decomposed, or install tensorrt")
    return attention


def passes_for(backend: str, attention: str, precision: str) -> tuple[GraphPass, ...]:
    """The graph passes that turn an exported model into the backend's form."""
    retarget_attention = decompose if attention == "decomposed" else (
        to_onnxruntime if backend == "onnxruntime" else to_tensorrt)
    return (cleanup, *((to_fp16,) if precision == "fp16" else ()), retarget_attention, cleanup)


@dataclass(frozen=True)
class LoadedModel:
    """An eval-mode model with its name, config and the manifest's record of its weights."""

    name: str
    config: ModelConfig
    model: torch.nn.Module
    weights: dict


def load_model(name: str | None, checkpoint: Path | None, seed: int, ema: bool = False) -> LoadedModel:
    """The model to deploy: the named config with random weights from ``seed``, or a checkpoint's weights.

    A checkpoint says its own architecture (DeiT's args, the pickled LM's attributes) or is matched by its
    tensors against the named configs; with ``name`` too it must fit that config (the error says what differs).
    """
    if checkpoint is None:
        if name is None:
            raise UserError("name a model with --model, give a --checkpoint that says its architecture, or build "
                            "from an ONNX file with --onnx")
        if ema:
            raise UserError("--ema needs a --checkpoint that holds an EMA copy (DeiT's model_ema)")
        try:
            config = get_config(name)
        except KeyError as exc:
            raise UserError(exc.args[0]) from exc
        return LoadedModel(name, config, create_model(config, seed), {"seed": seed})
    try:
        found = read_checkpoint(checkpoint, ema)
        named, config = resolve_config(found, name)
        model = create_model(config, seed)
        load_weights(model, found, config)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    weights = {"checkpoint": str(checkpoint.resolve()), "sha256": found.sha256, "format": found.format, "ema": ema}
    return LoadedModel(named or checkpoint.stem, config, model, weights)


def rebuild_model(config: ModelConfig, weights: dict, checkpoint: Path | None = None) -> torch.nn.Module:
    """The eval-mode model an artifact was built from, from its manifest's config and weights record.

    An artifact built from a checkpoint records its path and sha256, but the path is never followed (no file
    outside an artifact is read because its manifest names it): the caller names the ``checkpoint``, which
    must have the recorded sha256.
    """
    if "checkpoint" not in weights:
        if checkpoint is not None:
            raise UserError("the artifact was built from random weights (no checkpoint): drop --checkpoint")
        return create_model(config, int(weights.get("seed", 0)))
    if checkpoint is None:
        raise UserError(f"the artifact was built from the checkpoint {weights['checkpoint']}: name it with "
                        "--checkpoint FILE (a path in a manifest is not followed)")
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    model = create_model(config, 0)
    try:
        found = read_checkpoint(checkpoint, bool(weights.get("ema")))
        if found.sha256 != weights.get("sha256"):
            raise CheckpointError(f"checkpoint {checkpoint} is not the one the artifact was built from (sha256 "
                                  f"{found.sha256[:12]}..., the artifact's {str(weights.get('sha256'))[:12]}...)")
        load_weights(model, found, config)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    return model


def _versions() -> dict[str, str]:
    """Installed versions of the packages that shape an artifact."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def value_bounds(config: ModelConfig) -> dict[str, list[int]]:
    """The values an integer input may hold: an LM's token ids lie in its vocabulary (ONNX's Gather would wrap
    -1 to the last row, where the eager model raises)."""
    return {"tokens": [0, config.n_token - 1]} if isinstance(config, LMConfig) else {}


def export_ranges(config: ModelConfig) -> Profiles:
    """What the exported ONNX accepts for each dynamic dimension, as (min, opt, max)."""
    ranges = {"batch": (1, 1, MAX_BATCH)}
    if isinstance(config, LMConfig):
        ranges["seq"] = (1, config.tgt_len, config.tgt_len)
    return ranges


def tensorrt_profiles(config: ModelConfig, shapes: Profiles | None) -> Profiles:
    """TensorRT optimization profile: ``shapes`` over defaults (batch 1..16, sequence 1..context)."""
    return checked_profiles(export_ranges(config), {**export_ranges(config), "batch": (1, 1, 16), **(shapes or {})},
                            "this model")


def checked_profiles(limits: Profiles, profiles: Profiles, model: str) -> Profiles:
    """``profiles``, once each names a dynamic dimension of ``model`` within its ``limits`` and every one of them
    has a profile; UserError naming the first that does not."""
    for name, (low, opt, high) in profiles.items():
        if name not in limits:
            raise UserError(f"--shapes names {name!r}, which is not a dynamic dimension of {model} "
                            f"({', '.join(limits) or 'it has none'})")
        if not limits[name][0] <= low <= opt <= high <= limits[name][2]:
            raise UserError(f"profile {name}={low}:{opt}:{high} must satisfy "
                            f"{limits[name][0]} <= min <= opt <= max <= {limits[name][2]}")
    if missing := [name for name in limits if name not in profiles]:
        raise UserError(f"TensorRT needs a profile for each dynamic dimension of {model}: give --shapes "
                        + " ".join(f"{name}=MIN:OPT:MAX" for name in missing))
    return profiles


def retarget(proto: onnx.ModelProto, passes: tuple[GraphPass, ...]) -> onnx.ModelProto:
    """Run graph passes on an exported model; the result passes ``onnx.checker``. UserError with the reason
    if a pass cannot transform this graph."""
    graph = gs.import_onnx(proto)
    for graph_pass in passes:
        log.debug("pass %s", graph_pass.__name__)
        try:
            graph = graph_pass(graph)
        except ValueError as exc:
            raise UserError(f"pass {graph_pass.__name__}: {one_line(exc)}") from exc
    result = gs.export_onnx(graph)
    result.ir_version = proto.ir_version
    try:
        onnx.checker.check_model(result)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"the transformed model is not valid ONNX: {one_line(exc)}") from exc
    return result


def _smoke_run(directory: Path, manifest: Manifest) -> None:
    """Run the ONNX Runtime artifact once on random inputs; UserError on non-finite outputs."""
    library = directory / manifest.plugin_library if manifest.plugin_library else None
    artifact = Artifact(directory, manifest, ort_session(directory / manifest.onnx_file, library))
    feeds = random_feeds(manifest, batch=1 if "batch" in manifest.dynamic_ranges else None)
    if not all(np.isfinite(o).all() for o in artifact.run(feeds).values()):
        raise UserError("the built model produced non-finite outputs on random inputs")


@dataclass(frozen=True)
class Source:
    """What an artifact is built from: its ONNX model with FourierAttention nodes, and what the manifest says of
    it (the eager model's config and weights, or the ONNX file's record and how many layers were fused)."""

    name: str
    proto: onnx.ModelProto
    config: ModelConfig | None
    weights: dict
    ranges: Profiles
    """(min, opt, max) of each dynamic dimension the model accepts."""
    bounds: dict[str, list[int]]
    """The values each integer input may hold."""
    fused_layers: int | None = None


def _model_source(loaded: LoadedModel, opset: int) -> Source:
    """A named model or checkpoint, exported with one FourierAttention node per layer."""
    log.info("[2/5] exporting %s to ONNX (opset %d)", loaded.name, opset)
    return Source(loaded.name, export_onnx(loaded.model, loaded.config, opset), loaded.config, loaded.weights,
                  export_ranges(loaded.config), value_bounds(loaded.config))


def _onnx_source(path: Path) -> Source:
    """A user's ONNX file, its Fourier attention fused (export/passes/fuse.py)."""
    log.info("[2/5] reading %s and fusing its Fourier attention", path)
    source = fused_source(path)
    if source.layers == 0:
        candidates = len(source.report.candidates)
        log.warning("warning: no Fourier attention found to fuse in %s; the artifact works, without our kernel%s",
                    path, f". Why each of its {candidates} candidate(s) was left alone:" if candidates else
                    " (the graph has no pairwise difference of two tensors, where Fourier attention starts)")
        for line in source.report.lines():
            if line.startswith("- "):
                log.warning("  %s", line)
    else:
        log.info("%d attention layer(s) as FourierAttention nodes (%d fused here)", source.layers,
                 source.report.fused)
    return Source(path.stem, source.proto, None, {"onnx": str(path.resolve()), "sha256": source.sha256},
                  dynamic_ranges(source.proto), index_bounds(source.proto), source.layers)


def build_engine(options: BuildOptions, verify: Callable[[Path], object] | None = None) -> tuple[Path, Manifest]:
    """Build the artifact directory atomically; returns where it is and its manifest. ``verify(staging)``, if
    given, checks the finished artifact before it replaces anything at ``out`` (raise to refuse it)."""
    backend = resolve_backend(options.backend)
    check_applicable(options, backend)
    if backend == "tensorrt":
        load_tensorrt()  # before any slow step: says what to install
    check_compute_capabilities(options.compute_capabilities)
    attention = resolve_attention(backend, options.attention)
    if options.precision not in PRECISIONS:
        raise UserError(f"unknown precision {options.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if options.onnx is not None and (options.model or options.checkpoint or options.ema):
        raise UserError("--onnx builds from the ONNX file alone: drop --model, --checkpoint and --ema")
    loaded = None if options.onnx else load_model(options.model, options.checkpoint, options.seed, options.ema)
    name = options.onnx.stem if loaded is None else f"{loaded.name}{'-ema' if options.ema else ''}"
    out = options.out or BUILT_DIR / f"{name}-{backend}-{options.precision}"
    check_replaceable(out)  # before any slow step
    log.info("[1/5] %s", "finding the plugin library" if attention == "plugin" else "attention decomposed: no plugin")
    library = (plugin_library.ort_library() if backend == "onnxruntime" else plugin_library.trt_plugin_library()) \
        if attention == "plugin" else None
    source = _onnx_source(options.onnx) if loaded is None else _model_source(loaded, options.opset)
    if backend != "tensorrt":
        profiles = source.ranges
    elif source.config is None:
        profiles = checked_profiles(source.ranges, dict(options.shapes or {}), str(options.onnx))
    else:
        profiles = tensorrt_profiles(source.config, options.shapes)
    proto = retarget(source.proto, passes_for(backend, attention, options.precision))
    manifest = Manifest(
        model=source.name, config=config_to_dict(source.config) if source.config else None, weights=source.weights,
        backend=backend, precision=options.precision, attention=attention, onnx_file=ONNX_FILE,
        inputs=tensor_infos(list(proto.graph.input), source.bounds), outputs=tensor_infos(list(proto.graph.output)),
        dynamic_ranges={name: [low, high] for name, (low, _, high) in profiles.items()}, versions=_versions(),
        plugin_library=library.name if library else None, fused_layers=source.fused_layers,
    )
    if backend == "onnxruntime" and library:  # the path of the op's smoke run; each machine picks its own at load
        manifest.versions["cpu_kernel_path"] = cpu_kernel.isa()
    with staging_directory(out) as staging:
        onnx.save(proto, staging / ONNX_FILE)
        if library:
            shutil.copy2(library, staging / library.name)
        if backend == "onnxruntime":
            log.info("[3/5] smoke-running the model in ONNX Runtime")
            _smoke_run(staging, manifest)
        else:
            log.info("[3/5] building the TensorRT engine (this can take minutes)")
            trt = build_tensorrt_engine(staging / ONNX_FILE, staging / ENGINE_FILE, profiles,
                                        list(options.compute_capabilities),
                                        staging / library.name if library else None,
                                        options.timing_cache or default_timing_cache())
            manifest.engine_file = ENGINE_FILE
            manifest.tensorrt = TensorRTInfo(trt.flavour, trt.version, list(options.compute_capabilities),
                                             {name: list(p) for name, p in profiles.items()},
                                             plugin_tensorrt_version(library) if library else None)
        check_manifest(manifest)  # what every later command will load
        log.info("[4/5] hashing files")
        write_manifest(staging, manifest)
        if verify is not None:
            verify(staging)
        log.info("[5/5] writing %s", out)
    return out, manifest
