"""The one specification of the FourierAttention op.

The exporter, every graph pass, the C++ libraries' attribute lists (checked by
tests), the documentation and the tests all derive from this module.

Three node forms exist:

* the *portable* form written by the exporter: domain ``fourierformer``,
  inputs ``(q, k, v, R)`` with the learnable ``R`` a scalar tensor input, and
  the attributes in :data:`NODE_ATTRIBUTES`;
* the *ONNX Runtime* form implemented by ``libfourierformer_ort.so``: domain
  ``fourierformer.onnxruntime``, inputs ``(q, k, v)``, ``R`` folded into an
  attribute, i.e. all of :data:`ATTRIBUTES`; or, where ``R`` is computed at
  run time (a user's graph input), ``(q, k, v, R)`` with ``R`` a float32
  one-element tensor overriding the attribute;
* the *TensorRT* form that TensorRT's ONNX parser maps to the plugin in
  ``libfourierformer_trt.so``: op type = plugin name, inputs ``(q, k, v)``,
  :data:`ATTRIBUTES` as plugin fields plus ``plugin_version`` and
  ``plugin_namespace``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

OP_TYPE = "FourierAttention"
DOMAIN = "fourierformer"
VERSION = 1
ORT_DOMAIN = "fourierformer.onnxruntime"
ORT_VERSION = 1
TENSORRT_DOMAIN = "trt.plugins"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
TORCH_OP = f"{DOMAIN}::fourier_attention"
"""The PyTorch custom op on our kernels (export/torch_op.py): (q, k, v, R, power, eps, causal) -> out."""
CUDA_MAX_DIM = 256
"""Largest head dim D (last axis of q, k, v) of the CUDA kernel, hence of the TensorRT plugin (FF_CUDA_MAX_DIM)."""

INPUTS = ("q", "k", "v", "R")
"""Portable node inputs: q[B,H,Nq,D], k[B,H,Nk,D], v[B,H,Nk,D], scalar R."""
OUTPUTS = ("out",)
"""Node output: out[B,H,Nq,D], the dtype of q."""

AttributeValue = Union[int, float]


@dataclass(frozen=True)
class Attribute:
    """One attribute: its name, Python type, default, documented range and check."""

    name: str
    type: type
    default: AttributeValue
    doc: str
    valid_range: str
    is_valid: Callable[[AttributeValue], bool]

    def check(self, value: AttributeValue) -> AttributeValue:
        """Return ``value`` cast to this attribute's type, or raise ValueError naming the problem."""
        if self.type is int and (isinstance(value, bool) or int(value) != value):
            raise ValueError(f"FourierAttention attribute {self.name}={value!r} must be an integer")
        cast = self.type(value)
        if not self.is_valid(cast):
            raise ValueError(f"FourierAttention attribute {self.name}={value!r} is out of range: {self.valid_range}")
        return cast


R = Attribute(
    "R", float, 1.0, "Kernel bandwidth: x = R * (q_i - k_j). A learnable scalar in the model.",
    "finite, > 0", lambda r: math.isfinite(r) and r > 0,
)
POWER = Attribute(
    "power", int, 4, "Exponent of each sinc factor: w_ij = prod_d sinc(x_d) ** power.",
    "even integer, 2 <= power <= 64", lambda p: p % 2 == 0 and 2 <= p <= 64,
)
EPS = Attribute(
    "eps", float, 1e-6, "Added to the weight sum: out_i = sum_j w_ij v_j / (sum_j w_ij + eps).",
    "finite, > 0", lambda e: math.isfinite(e) and e > 0,
)
CAUSAL = Attribute(
    "causal", int, 0, "1: w_ij = 0 for j > i + (Nk - Nq) (bottom-right aligned mask).",
    "0 or 1", lambda c: c in (0, 1),
)

ATTRIBUTES: tuple[Attribute, ...] = (R, POWER, EPS, CAUSAL)
"""Every attribute of the op, in the order the C++ libraries list them."""
NODE_ATTRIBUTES: tuple[Attribute, ...] = (POWER, EPS, CAUSAL)
"""Attributes of the portable node (R is its fourth input there)."""
BY_NAME = {a.name: a for a in ATTRIBUTES}


def check_attributes(values: dict[str, AttributeValue], attributes: tuple[Attribute, ...] = ATTRIBUTES) -> dict[str, AttributeValue]:
    """Fill defaults, cast and range-check ``values``; raise ValueError on an unknown or bad attribute."""
    known = {a.name for a in attributes}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"FourierAttention has no attribute(s) {unknown}; known: {sorted(known)}")
    return {a.name: a.check(values.get(a.name, a.default)) for a in attributes}


def markdown_table() -> str:
    """The attribute table for the documentation."""
    rows = ["| attribute | type | default | range | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{a.name}` | {a.type.__name__} | {a.default} | {a.valid_range} | {a.doc} |" for a in ATTRIBUTES]
    return "\n".join(rows)
