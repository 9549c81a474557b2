"""Single-node ONNX models of FourierAttention and random inputs for them, for tests and benchmarks of the op."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from fourierformer import opspec

IR_VERSION = 10
"""onnx 1.23 writes IR 14 by default, which ONNX Runtime 1.31 rejects."""


def _op_model(domain: str, version: int, dim: int | str, attrs: dict[str, float | int], dtype: np.typing.DTypeLike,
              initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """One FourierAttention node in ``domain``: inputs q, k, v [B, H, Nq or Nk, dim] with dynamic B, H, Nq, Nk, then
    the initializers; output out."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dims = {"q": ["B", "H", "Nq", dim], "k": ["B", "H", "Nk", dim], "v": ["B", "H", "Nk", dim]}
    inputs = [helper.make_tensor_value_info(n, elem, d) for n, d in dims.items()]
    output = helper.make_tensor_value_info("out", elem, dims["q"])
    node = helper.make_node(opspec.OP_TYPE, [*dims, *(t.name for t in initializers)], ["out"], domain=domain, **attrs)
    graph = helper.make_graph([node], "fourier_attention", inputs, [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(domain, version)])
    model.ir_version = IR_VERSION
    return model


def ort_op_model(attributes: dict[str, float | int], dtype: np.typing.DTypeLike = np.float32) -> onnx.ModelProto:
    """One FourierAttention node in the ONNX Runtime form: inputs q, k, v of rank 4, dynamic sizes, output out."""
    return _op_model(opspec.ORT_DOMAIN, opspec.ORT_VERSION, "D", opspec.check_attributes(attributes), dtype, [])


def portable_op_model(dim: int, attributes: dict[str, float | int], dtype: np.typing.DTypeLike = np.float32,
                      ) -> onnx.ModelProto:
    """One FourierAttention node in the exporter's portable form (what every graph pass takes): inputs q, k, v of
    shape [B, H, Nq or Nk, dim] with dynamic B, H, Nq, Nk, R a float32 constant input, output out."""
    attrs = opspec.check_attributes(attributes)
    r = helper.make_tensor("R", onnx.TensorProto.FLOAT, [], [attrs.pop("R")])
    return _op_model(opspec.DOMAIN, opspec.VERSION, dim, attrs, dtype, [r])


def attention_inputs(b: int, h: int, nq: int, nk: int, d: int, R: float, seed: int = 0, spread: float = 1.0,
                     shift: float = 0.0) -> dict[str, np.ndarray]:
    """Random float32 q, k, v with R*(q-k) of typical size spread/sqrt(d), so weights neither vanish nor saturate.

    ``shift`` adds the same offset to q and k: R*q grows large while R*(q-k) does not (stresses cancellation).
    """
    rng = np.random.default_rng(seed)
    scale = spread / (R * np.sqrt(2 * d))
    q = rng.standard_normal((b, h, nq, d)) * scale + shift
    k = rng.standard_normal((b, h, nk, d)) * scale + shift
    v = rng.standard_normal((b, h, nk, d))
    return {"q": q.astype(np.float32), "k": k.astype(np.float32), "v": v.astype(np.float32)}
