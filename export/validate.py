"""validate: run an artifact and the eager PyTorch model (or the ONNX file it was built from) on the same random
inputs and compare with Polygraphy."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc

from export.artifact import Manifest
from export.builder import rebuild_model
from export.errors import UserError, one_line
from export.onnx_source import read_onnx
from export.options import TOLERANCES
from export.runtime import check_feeds, load_artifact, ort_session, random_feeds
from fourierformer.configs import config_from_dict
from fourierformer.models import create_model

log = logging.getLogger(__name__)

"""Default (atol, rtol, max normwise error) by precision: an element fails only if it exceeds both atol and
rtol (Polygraphy's rule); an output fails if ||out - eager|| / ||eager|| exceeds the normwise bound."""


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    """Floating tensors as float32 (the eager model's type), others unchanged."""
    return tensor.float() if tensor.is_floating_point() else tensor


class EagerRunner(BaseRunner):
    """Polygraphy runner for eager PyTorch on the CPU (Polygraphy's own PytRunner needs CUDA).

    ``model`` is any callable taking the inputs as keyword tensors (an eval-mode module, a reference function),
    given floating inputs as float32 whatever the feed's type;
    ``example`` is a feed dict whose names, dtypes and shapes the runner declares as its inputs.
    """

    def __init__(self, model: Callable[..., torch.Tensor], output_names: list[str], example: dict[str, np.ndarray],
                 name: str = "eager-pytorch"):
        super().__init__(name=name, prefix="eager")
        self.model, self.output_names = model, output_names
        self.input_metadata = TensorMetadata.from_feed_dict(example)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self.input_metadata

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        with torch.no_grad():
            outputs = self.model(**{k: _float32(torch.from_numpy(v)) for k, v in feed_dict.items()})
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((n, o.numpy()) for n, o in zip(self.output_names, outputs))

    def deactivate_impl(self) -> None:
        pass


@dataclass(frozen=True)
class OutputError:
    """Error statistics of one output against the eager model."""

    name: str
    max_abs: float
    max_rel: float
    norm_rel: float


def error_stats(name: str, out: np.ndarray, ref: np.ndarray) -> OutputError:
    """Max absolute, max relative and normwise relative error of ``out`` against ``ref``."""
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out64 - ref64)
    max_rel = float((diff / np.maximum(np.abs(ref64), np.finfo(np.float32).tiny)).max()) if diff.size else 0.0
    norm = float(np.linalg.norm(ref64))
    norm_rel = float(np.linalg.norm(out64 - ref64) / norm) if norm > 0 else float(np.linalg.norm(out64))
    return OutputError(name, float(diff.max()) if diff.size else 0.0, max_rel, norm_rel)


def eager_model(directory: Path, manifest: Manifest, checkpoint: Path | None = None) -> torch.nn.Module:
    """Rebuild the artifact's eager model from its manifest (same config, same weights: see rebuild_model),
    once its size is found to fit what the artifact's model file holds."""
    try:
        config = config_from_dict(manifest.config)
    except ValueError as exc:
        raise UserError(f"the artifact's model config does not fit this version ({exc}); rebuild it") from exc
    with torch.device("meta"):  # counted without allocating: a manifest cannot make validate exhaust memory
        parameters = sum(p.numel() for p in create_model(config).parameters())
    held = (directory / manifest.onnx_file).stat().st_size
    if parameters > held + (1 << 20):  # float16 weights take 2 bytes each, float32 4
        raise UserError(f"artifact {directory}: its config describes {parameters:,} parameters, more than its "
                        f"{manifest.onnx_file} ({held:,} bytes) can hold")
    return rebuild_model(config, manifest.weights, checkpoint)


def original_onnx(manifest: Manifest, onnx_file: Path | None) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The ONNX file an artifact was built from, run in stock ONNX Runtime (no custom ops), as a callable on
    keyword tensors. The path in the manifest is never followed: the caller names the file, which must have the
    recorded sha256."""
    recorded = manifest.weights
    if onnx_file is None:
        raise UserError(f"the artifact was built from the ONNX file {recorded['onnx']}: name it with --onnx FILE "
                        "(a path in a manifest is not followed)")
    proto, sha256 = read_onnx(onnx_file)  # the checks of the build, on the bytes then used
    if sha256 != recorded["sha256"]:
        raise UserError(f"{onnx_file} is not the file the artifact was built from (sha256 differs from the "
                        f"recorded {recorded['sha256'][:12]}...)")
    session = ort_session(proto.SerializeToString(), None)
    names = [t.name for t in manifest.outputs]

    def run(**inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in session.run(names, {k: v.numpy() for k, v in inputs.items()}))
    return run


def reference_runner(directory: Path, manifest: Manifest, feeds: dict[str, np.ndarray], checkpoint: Path | None,
                     onnx_file: Path | None) -> EagerRunner:
    """What an artifact is compared with: the eager model it was built from, or its original ONNX file."""
    names = [t.name for t in manifest.outputs]
    if manifest.config is None:
        if checkpoint is not None:
            raise UserError("the artifact was built from an ONNX file, not a checkpoint: drop --checkpoint, "
                            "give --onnx FILE")
        return EagerRunner(original_onnx(manifest, onnx_file), names, feeds, name="original-onnx")
    if onnx_file is not None:
        raise UserError("--onnx applies to artifacts built from an ONNX file; this one is compared with its "
                        "eager model")
    return EagerRunner(eager_model(directory, manifest, checkpoint), names, feeds)


def validate(directory: Path, batch: int | None = None, seq: int | None = None, seed: int = 0,
             atol: float | None = None, rtol: float | None = None, max_norm_error: float | None = None,
             checkpoint: Path | None = None, onnx_file: Path | None = None
             ) -> tuple[bool, list[OutputError], tuple[float, float, float]]:
    """Compare the artifact with the eager model (or, for one built from an ONNX file, with that file run in
    stock ONNX Runtime) on random inputs (runtime.random_feeds); returns (passed, per-output errors, tolerances).

    Tolerances left as None take the defaults for the artifact's precision (:data:`TOLERANCES`).
    """
    artifact = load_artifact(directory)
    manifest = artifact.manifest
    feeds = random_feeds(manifest, batch, seq, seed)
    check_feeds(manifest, feeds)
    reference = reference_runner(directory, manifest, feeds, checkpoint, onnx_file)
    defaults = TOLERANCES[manifest.precision]
    atol, rtol, max_norm_error = (d if v is None else v for v, d in zip((atol, rtol, max_norm_error), defaults))
    names = [t.name for t in manifest.outputs]
    try:
        results = Comparator.run([artifact.polygraphy_runner(), reference], data_loader=[feeds])
    except Exception as exc:  # ONNX Runtime's, TensorRT's and Polygraphy's own error types
        raise UserError(f"validate could not run {directory}: {one_line(exc)}") from exc
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    built, expected = (iterations[0] for _, iterations in results)
    stats = [error_stats(n, np.asarray(built[n]), np.asarray(expected[n])) for n in names]
    passed = bool(accuracy) and all(s.norm_rel <= max_norm_error for s in stats)
    return passed, stats, (atol, rtol, max_norm_error)
