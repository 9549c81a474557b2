"""The build and check options: their choices, defaults and :class:`BuildOptions`, shared by the command line,
the Python API and the builder. Torch-free, so that ``--help`` and ``run`` load quickly and without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.errors import UserError
from export.paths import cache_dir

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")
ATTENTIONS = ("plugin", "decomposed")
OPSET = 18
"""Default ONNX opset: new enough for LayerNormalization, old enough for every TensorRT parser."""
OPSETS = (17, 23)
"""The opsets the export accepts, first and last: LayerNormalization needs 17; ONNX Runtime 1.31 reads up to 23."""
TOLERANCES = {"fp32": (1e-4, 1e-4, 1e-4), "fp16": (5e-2, 5e-2, 5e-3)}
"""validate's default atol, rtol and normwise bound by precision."""
EXAMPLE_SIZE = 2
"""The batch of random inputs (run, validate, a build's smoke run), and the size of every dynamic dimension of a
model built from an ONNX file, unless told."""
MAX_SEED = 2**32 - 1
"""The largest seed (numpy's and torch's generators take 32 bits)."""
MAX_BATCH = 4096
"""The largest batch an exported model accepts, and the largest dynamic range a manifest may give."""
BUILT_DIR = Path("engines/built")
"""Where build-engine puts an artifact without --out (relative to the working folder):
BUILT_DIR/MODEL[-ema]-BACKEND-PRECISION."""

Profiles = dict[str, tuple[int, int, int]]
"""min, opt, max of each dynamic dimension, by the dimension's name in the ONNX model."""


def default_timing_cache() -> Path:
    """The TensorRT timing cache that builds naming none read and update (in the per-user cache)."""
    return cache_dir() / "tensorrt" / "timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    """What to build and where.

    ``model`` names the architecture; it may be None with a ``checkpoint`` that says its own, or with ``onnx``, a
    user's ONNX file to build from instead (its Fourier attention fused; no model, checkpoint or ema). ``out`` None:
    ``BUILT_DIR/MODEL[-ema]-BACKEND-PRECISION`` with the resolved backend. ``shapes``, ``compute_capabilities``
    and ``timing_cache`` (None: :func:`default_timing_cache`) apply to the tensorrt backend only.
    """

    model: str | None
    out: Path | None = None
    backend: str = "auto"
    precision: str = "fp32"
    attention: str = "auto"
    checkpoint: Path | None = None
    seed: int = 0
    opset: int = OPSET
    shapes: Profiles | None = None
    compute_capabilities: tuple[int, ...] = ()
    timing_cache: Path | None = None
    ema: bool = False
    onnx: Path | None = None


def check_applicable(options: BuildOptions, backend: str) -> None:
    """UserError naming the TensorRT-only options given for a build whose backend is not tensorrt."""
    given = [name for name, value in (("shapes", options.shapes), ("compute_capabilities", options.compute_capabilities),
                                      ("timing_cache", options.timing_cache)) if value]
    if backend != "tensorrt" and given:
        raise UserError(f"{', '.join(given)} only apply to the tensorrt backend; this build's is {backend}")
