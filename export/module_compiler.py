"""export.compile: a user's own nn.Module -> plain ONNX export -> build-engine --onnx -> checked against the module."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from export.artifact import write_atomically
from export.builder import build_engine
from export.errors import UserError
from export.onnx_export import export_module
from export.options import TOLERANCES, BuildOptions
from export.runtime import artifact_feeds, load_artifact
from export.validate import error_stats

log = logging.getLogger(__name__)


def check_against_module(directory: Path, module: nn.Module, example_inputs: dict[str, torch.Tensor]) -> float:
    """The worst normwise error of the artifact's outputs against ``module``'s on ``example_inputs``; UserError
    beyond the artifact's precision's bound."""
    with torch.no_grad():
        expected = tree_leaves(module(**example_inputs))  # in the order the exporter flattens them
    with load_artifact(directory) as artifact:
        outputs = artifact.run(artifact_feeds(artifact.manifest, example_inputs))
        bound = TOLERANCES[artifact.manifest.precision][2]
    if len(outputs) != len(expected):
        raise UserError(f"the artifact has {len(outputs)} outputs, the module returns {len(expected)}")
    errors = [error_stats(name, out, ref.detach().float().cpu().numpy())
              for (name, out), ref in zip(outputs.items(), expected)]
    worst = max(errors, key=lambda e: e.norm_rel)
    if not worst.norm_rel <= bound:
        raise UserError(f"{directory} disagrees with {type(module).__name__} on the example inputs ({worst.name}: "
                        f"normwise error {worst.norm_rel:.2e} > {bound:g})")
    log.info("checked %s against %s: normwise error %.1e", directory, type(module).__name__, worst.norm_rel)
    return worst.norm_rel


def compile_module(module: nn.Module, example_inputs: dict[str, torch.Tensor], options: BuildOptions,
                   dynamic_shapes: dict | None = None, source: Path | None = None) -> Path:
    """Export ``module`` plainly (to ``source`` if given, else a temporary file, whose path the manifest then
    records), build it as ``build-engine --onnx`` does with ``options``, and check the artifact against the module
    before it replaces anything at the output folder; returns the artifact directory. The module is left in eval
    mode."""
    if not isinstance(module, nn.Module) or not isinstance(example_inputs, dict) or not example_inputs:
        raise UserError("compile takes an nn.Module and its example inputs as a dict of tensors by argument name")
    proto = export_module(module, example_inputs, options.opset, dynamic_shapes)
    with tempfile.TemporaryDirectory(prefix="fourierformer-compile-") as tmp:
        path = source or Path(tmp) / f"{type(module).__name__}.onnx"
        write_atomically(path, proto.SerializeToString(), "the exported ONNX model")
        return build_engine(dataclasses.replace(options, onnx=path),
                            verify=lambda staging: check_against_module(staging, module, example_inputs))[0]
