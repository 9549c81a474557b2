"""Running artifacts: ONNX Runtime sessions with our custom-op library, input checks, npz I/O."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner

from export.artifact import Manifest, load_manifest
from export.errors import UserError
from export.tensorrt_backend import tensorrt_runner

log = logging.getLogger(__name__)


def ort_session(onnx_path: Path | bytes, library: Path | None, threads: int = 0) -> ort.InferenceSession:
    """A CPU InferenceSession for ``onnx_path`` (a file or serialized model), with ``library`` registered if given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if library is not None:
        if not library.is_file():
            raise UserError(f"plugin library not found: {library}")
        try:
            options.register_custom_ops_library(str(library))
        except Exception as exc:  # ORT raises its own RuntimeError subclasses
            raise UserError(f"cannot load plugin library {library}: {exc}") from exc
    model = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load the model: {exc}") from exc


def open_artifact(directory: Path) -> tuple[Manifest, BaseRunner]:
    """Verify an artifact and return a Polygraphy runner for it (ONNX Runtime or TensorRT)."""
    manifest = load_manifest(directory)
    library = directory / manifest.plugin_library if manifest.plugin_library else None
    if manifest.backend == "onnxruntime":
        return manifest, OnnxrtRunner(ort_session(directory / manifest.onnx_file, library), name="onnxruntime")
    if manifest.backend == "tensorrt":
        return manifest, tensorrt_runner(directory / manifest.engine_file, manifest.tensorrt, library)
    raise UserError(f"{directory} was built for backend {manifest.backend!r}, which this tool cannot run")


def artifact_feeds(manifest: Manifest, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Model inputs as numpy arrays in the artifact's dtypes (float16 for FP16 artifacts)."""
    dtypes = {t.name: np.dtype(t.dtype) for t in manifest.inputs}
    return {name: value.numpy().astype(dtypes.get(name, value.numpy().dtype)) for name, value in inputs.items()}


def check_feeds(manifest: Manifest, feeds: dict[str, np.ndarray]) -> None:
    """UserError unless ``feeds`` has exactly the manifest's inputs with its dtypes, ranks and dimension ranges."""
    expected = {t.name: t for t in manifest.inputs}
    if set(feeds) != set(expected):
        raise UserError(f"inputs {sorted(feeds)} do not match the model's inputs {sorted(expected)}")
    for name, value in feeds.items():
        info = expected[name]
        if value.dtype != np.dtype(info.dtype):
            raise UserError(f"input {name!r} has dtype {value.dtype}, expected {info.dtype}")
        if value.ndim != len(info.shape):
            raise UserError(f"input {name!r} has shape {list(value.shape)}, expected rank {len(info.shape)} {info.shape}")
        for axis, (size, dim) in enumerate(zip(value.shape, info.shape)):
            low, high = manifest.dynamic_ranges.get(dim, (dim, dim)) if isinstance(dim, str) else (dim, dim)
            if not low <= size <= high:
                raise UserError(f"input {name!r} axis {axis} ({dim}) is {size}, outside {low}..{high}")


def run(runner: BaseRunner, manifest: Manifest, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check ``feeds`` against the manifest and run the artifact once; returns outputs by name."""
    check_feeds(manifest, feeds)
    with runner:
        outputs = runner.infer(feeds)
    return {t.name: np.array(outputs[t.name]) for t in manifest.outputs}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file by name."""
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a readable .npz file: {exc}") from exc
