"""PyTorch -> ONNX: one ``fourierformer::FourierAttention`` node per attention layer, dynamic batch and sequence."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator

import onnx
import torch
from torch import nn

from export.errors import UserError, one_line
from export.options import MAX_BATCH, OPSET
from fourierformer import opspec
from fourierformer.attention import FourierAttention, fourier_attention_reference
from fourierformer.configs import LMConfig, ModelConfig
from fourierformer.models import example_inputs, output_names

log = logging.getLogger(__name__)


def input_names(config: ModelConfig) -> list[str]:
    """The model's ONNX input names."""
    return list(example_inputs(config, batch=1, seq=1))


def _dynamic_shapes(config: ModelConfig) -> dict[str, dict[int, torch.export.Dim]]:
    """Dynamic axes: batch always; sequence length (up to the context) for language models."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if isinstance(config, LMConfig):
        return {"tokens": {0: batch, 1: torch.export.Dim("seq", min=1, max=config.tgt_len)}}
    return {"images": {0: batch}}


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's exporter chatter (torchvision missing, deprecations) unless our debug log is on (-v)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class _PlainAttention(nn.Module):
    """A FourierAttention layer's computation as the eager reference writes it, for a plain export."""

    def __init__(self, layer: FourierAttention):
        super().__init__()
        self.R, self.power, self.eps, self.causal = layer.paramR, layer.power, layer.eps, layer.causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fourier_attention_reference(q, k, v, self.R.reshape(()).abs(), self.power, self.eps, self.causal)


@contextlib.contextmanager
def _plain_attention(model: nn.Module) -> Iterator[None]:
    """Every FourierAttention layer of ``model`` computed in plain PyTorch ops (what a general-purpose exporter
    sees), restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, FourierAttention)]
    saved = [layer.fused for layer in layers]
    for layer in layers:
        layer.fused = _PlainAttention(layer)
    try:
        yield
    finally:
        for layer, fused in zip(layers, saved):
            layer.fused = fused


def export_onnx(model: nn.Module, config: ModelConfig, opset: int = OPSET, plain: bool = False) -> onnx.ModelProto:
    """Export ``model`` with the dynamo exporter and check the result with ``onnx.checker``; with ``plain`` the
    attention is written in standard ONNX ops as a plain ``torch.onnx.export`` writes it, not as our node."""
    inputs = example_inputs(config, batch=2, seq=None if not isinstance(config, LMConfig) else min(8, config.tgt_len))
    quiet = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(quiet), _quiet_torch(), \
            (_plain_attention(model) if plain else contextlib.nullcontext()):
        program = torch.onnx.export(
            model, (), kwargs=inputs, dynamo=True, dynamic_shapes=_dynamic_shapes(config),
            input_names=list(inputs), output_names=output_names(config), opset_version=opset,
            verbose=False,
        )
    log.debug("%s", quiet.getvalue())
    proto = program.model_proto
    exported = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if exported != opset:
        raise UserError(f"the exporter wrote opset {exported}, not the requested {opset}")
    onnx.checker.check_model(proto, full_check=False)
    count = sum(node.op_type == opspec.OP_TYPE and node.domain == opspec.DOMAIN for node in proto.graph.node)
    log.info("exported ONNX: %d nodes, %d FourierAttention", len(proto.graph.node), count)
    return proto


def export_module(module: nn.Module, example_inputs: dict[str, torch.Tensor], opset: int = OPSET,
                  dynamic_shapes: dict | None = None) -> onnx.ModelProto:
    """A user's ``module`` exported plainly with the dynamo exporter, its inputs named as ``example_inputs``'s keys
    (keyword arguments of its forward), outputs ``output``, ``output_1``, ...; UserError if the exporter fails."""
    quiet = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(quiet), _quiet_torch():
            program = torch.onnx.export(module.eval(), (), kwargs=example_inputs, dynamo=True, verbose=False,
                                        dynamic_shapes=dynamic_shapes, input_names=list(example_inputs),
                                        opset_version=opset)
    except Exception as exc:  # torch.export's and the ONNX exporter's many error types
        raise UserError(f"torch.onnx.export cannot export {type(module).__name__}: {one_line(exc)}") from exc
    log.debug("%s", quiet.getvalue())
    return program.model_proto
