"""validate: run an artifact and the eager PyTorch model on the same random inputs and compare with Polygraphy."""

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
from export.options import TOLERANCES
from export.runtime import artifact_feeds, check_feeds, check_sizes, load_artifact
from fourierformer.configs import LMConfig, config_from_dict
from fourierformer.models import create_model, example_inputs

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


def validate(directory: Path, batch: int = 2, seq: int | None = None, seed: int = 0, atol: float | None = None,
             rtol: float | None = None, max_norm_error: float | None = None, checkpoint: Path | None = None
             ) -> tuple[bool, list[OutputError], tuple[float, float, float]]:
    """Compare the artifact with the eager model; returns (passed, per-output errors, tolerances used).

    Tolerances left as None take the defaults for the artifact's precision (:data:`TOLERANCES`).
    """
    artifact = load_artifact(directory)
    manifest = artifact.manifest
    model = eager_model(directory, manifest, checkpoint)
    config = model.config
    if seq is not None and not isinstance(config, LMConfig):
        raise UserError("--seq applies to language models only")
    check_sizes(manifest, {"batch": batch, "seq": seq})
    try:
        feeds = artifact_feeds(manifest, example_inputs(config, batch=batch, seq=seq, seed=seed))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    check_feeds(manifest, feeds)
    defaults = TOLERANCES[manifest.precision]
    atol, rtol, max_norm_error = (d if v is None else v for v, d in zip((atol, rtol, max_norm_error), defaults))
    names = [t.name for t in manifest.outputs]
    runners = [artifact.polygraphy_runner(), EagerRunner(model, names, feeds)]
    try:
        results = Comparator.run(runners, data_loader=[feeds])
    except Exception as exc:  # ONNX Runtime's, TensorRT's and Polygraphy's own error types
        raise UserError(f"validate could not run {directory}: {one_line(exc)}") from exc
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    built, eager = (iterations[0] for _, iterations in results)
    stats = [error_stats(n, np.asarray(built[n]), np.asarray(eager[n])) for n in names]
    passed = bool(accuracy) and all(s.norm_rel <= max_norm_error for s in stats)
    return passed, stats, (atol, rtol, max_norm_error)

