"""bench: time FourierAttention implementations on the same inputs, after checking they agree."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from export import plugin_library
from export.op_model import ort_op_model
from export.runtime import ort_session
from export.validate import error_stats
from fourierformer.attention import fourier_attention_reference

log = logging.getLogger(__name__)

MAX_DISAGREEMENT = 1e-4
"""Normwise relative difference allowed between an implementation and the eager model before timing."""


@dataclass(frozen=True)
class Shape:
    """An op-level problem size."""

    batch: int
    heads: int
    n: int
    dim: int
    causal: bool = False

    @property
    def pair_dims(self) -> int:
        """Elementwise work of the op: B*H*Nq*Nk*D (halved, roughly, when causal)."""
        pairs = self.n * (self.n + 1) // 2 if self.causal else self.n * self.n
        return self.batch * self.heads * pairs * self.dim


@dataclass(frozen=True)
class Timing:
    """Median latency of one implementation at one shape."""

    implementation: str
    shape: Shape
    seconds: float
    error_vs_eager: float

    @property
    def pair_dims_per_second(self) -> float:
        return self.shape.pair_dims / self.seconds


def _inputs(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Random non-zero q, k, v scaled so that the weights neither vanish nor saturate (R = 1)."""
    rng = np.random.default_rng(seed)
    size = (shape.batch, shape.heads, shape.n, shape.dim)
    scale = 1.0 / np.sqrt(2 * shape.dim)
    return {"q": (rng.standard_normal(size) * scale).astype(np.float32),
            "k": (rng.standard_normal(size) * scale).astype(np.float32),
            "v": rng.standard_normal(size).astype(np.float32)}


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _implementations(shape: Shape, threads: int) -> dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """Every CPU implementation of the op, each mapping numpy inputs to a numpy output."""
    session = ort_session(ort_op_model({"causal": int(shape.causal)}).SerializeToString(),
                          plugin_library.ort_library(), threads)

    def eager(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            t = {k: torch.from_numpy(v) for k, v in feeds.items()}
            return fourier_attention_reference(t["q"], t["k"], t["v"], 1.0, causal=shape.causal).numpy()

    return {"eager-fp32": eager, "onnxruntime-op": lambda feeds: session.run(None, feeds)[0]}


def bench_op(shape: Shape, repeats: int = 5, warmup: int = 1, threads: int = 0) -> list[Timing]:
    """Time every implementation at ``shape``; each is checked against eager float32 first."""
    feeds = _inputs(shape)
    implementations = _implementations(shape, threads)
    reference = implementations["eager-fp32"](feeds)
    timings = []
    for name, fn in implementations.items():
        error = error_stats("out", fn(feeds), reference).norm_rel
        if error > MAX_DISAGREEMENT:
            raise RuntimeError(f"{name} disagrees with eager float32 at {shape}: normwise error {error:.2e}")
        seconds = _median_seconds(lambda: fn(feeds), repeats, warmup)
        log.info("%-16s %s: %.4f s", name, shape, seconds)
        timings.append(Timing(name, shape, seconds, error))
    return timings


def markdown(timings: list[Timing]) -> str:
    """A results table; speedups are against eager float32 at the same shape, in the same run."""
    eager = {t.shape: t.seconds for t in timings if t.implementation == "eager-fp32"}
    rows = ["| B | H | N | D | causal | implementation | median ms | pair-dims/s | vs eager | error vs eager |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for t in timings:
        s = t.shape
        rows.append(f"| {s.batch} | {s.heads} | {s.n} | {s.dim} | {int(s.causal)} | {t.implementation} | "
                    f"{t.seconds * 1e3:.1f} | {t.pair_dims_per_second:.2e} | {eager[s] / t.seconds:.1f}x | "
                    f"{t.error_vs_eager:.1e} |")
    return "\n".join(rows)


def machine_description() -> str:
    """CPU model, core count and the versions that set the numbers."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {ort.__version__}")


def write_report(timings: list[Timing], out: Path) -> None:
    """Write the machine line and the Markdown table to ``out/bench.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(machine_description() + "\n\n" + markdown(timings) + "\n")
