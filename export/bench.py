"""bench: time FourierAttention implementations on the same inputs, each checked for correctness first.

Honest timing: random non-zero inputs scaled so the weights neither vanish nor saturate, several input
sets rotated between runs (together larger than the last-level cache), warm-up, the median of repeated
runs, peak memory per implementation, and an implementation is skipped (with the reason) rather than
run where it cannot fit in memory.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from export import plugin_library
from export.op_model import attention_inputs, ort_op_model
from export.runtime import ort_session
from export.validate import error_stats
from fourierformer.attention import fourier_attention_oracle, fourier_attention_reference

log = logging.getLogger(__name__)

MAX_ERROR_VS_FP64 = 1e-4
"""Normwise relative error against the float64 oracle an implementation must meet before it is timed."""
ROTATING_BYTES = 64 << 20
"""Input sets rotate until together they exceed this (larger than the last-level cache)."""
ORACLE_ROWS = 8
"""Correctness is checked on this many query rows against the float64 oracle (full rows, every key)."""


@dataclass(frozen=True)
class Shape:
    """An op-level problem size (Nq = Nk = n)."""

    batch: int
    heads: int
    n: int
    dim: int
    causal: bool = False

    @property
    def pair_dims(self) -> int:
        """Elementwise work of the op, B*H*pairs*D, counting only the visible pairs when causal."""
        pairs = self.n * (self.n + 1) // 2 if self.causal else self.n * self.n
        return self.batch * self.heads * pairs * self.dim

    @property
    def input_bytes(self) -> int:
        return 3 * self.batch * self.heads * self.n * self.dim * 4


Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Implementation:
    """A way to compute the op: a factory for a runner, and its memory need (bytes) at a shape."""

    name: str
    make: Callable[[Shape], Callable[[Feeds], np.ndarray]]
    memory_bytes: Callable[[Shape], int]
    is_fourier: bool = True


@dataclass
class Result:
    """One implementation at one shape: median seconds, accuracy, peak memory, or why it was skipped."""

    implementation: str
    shape: Shape
    seconds: float | None = None
    error_vs_fp64: float | None = None
    peak_bytes: int | None = None
    skipped: str | None = None

    @property
    def pair_dims_per_second(self) -> float | None:
        return self.shape.pair_dims / self.seconds if self.seconds else None


def _eager(shape: Shape) -> Callable[[Feeds], np.ndarray]:
    def run(feeds: Feeds) -> np.ndarray:
        with torch.no_grad():
            t = {k: torch.from_numpy(v) for k, v in feeds.items()}
            return fourier_attention_reference(t["q"], t["k"], t["v"], 1.0, causal=shape.causal).numpy()
    return run


def _onnxruntime(shape: Shape) -> Callable[[Feeds], np.ndarray]:
    session = ort_session(ort_op_model({"causal": int(shape.causal)}).SerializeToString(), plugin_library.ort_library())
    return lambda feeds: session.run(None, feeds)[0]


def _sdpa(shape: Shape) -> Callable[[Feeds], np.ndarray]:
    def run(feeds: Feeds) -> np.ndarray:
        with torch.no_grad():
            t = [torch.from_numpy(feeds[k]) for k in "qkv"]
            return torch.nn.functional.scaled_dot_product_attention(*t, is_causal=shape.causal).numpy()
    return run


def _tensor_bytes(shape: Shape, per_pair: int) -> int:
    return shape.batch * shape.heads * shape.n * shape.n * per_pair * 4


IMPLEMENTATIONS = (
    # the eager model keeps about four [B,H,N,N,D] float32 tensors alive at its peak
    Implementation("eager-fp32", _eager, lambda s: 4 * _tensor_bytes(s, s.dim)),
    Implementation("onnxruntime-op", _onnxruntime, lambda s: 4 * s.input_bytes),
    Implementation("sdpa-fp32 (softmax)", _sdpa, lambda s: 3 * _tensor_bytes(s, 1), is_fourier=False),
)
"""CPU implementations; sdpa is PyTorch's softmax attention at the same shape, what Fourier attention replaces."""
OUR_KERNELS = {"onnxruntime-op"}
"""Implementations whose throughput is compared with the roofline of our kernel's op count."""


def inputs(shape: Shape, seed: int) -> Feeds:
    """Random non-zero q, k, v for ``shape`` (R = 1), scaled so row sums stay far above eps."""
    return attention_inputs(shape.batch, shape.heads, shape.n, shape.n, shape.dim, R=1.0, seed=seed)


def _reference(impl: Implementation, feeds: Feeds, causal: bool) -> np.ndarray:
    """Float64 truth for the last ORACLE_ROWS query rows (bottom-right alignment keeps their causal mask)."""
    t = {k: torch.from_numpy(v).double() for k, v in feeds.items()}
    q = t["q"][..., -ORACLE_ROWS:, :]
    if impl.is_fourier:
        return fourier_attention_oracle(q, t["k"], t["v"], 1.0, causal=causal).numpy()
    scores = q @ t["k"].transpose(-1, -2) / np.sqrt(q.shape[-1])
    if causal:
        nq, nk = scores.shape[-2:]
        hidden = torch.arange(nk)[None, :] > torch.arange(nq)[:, None] + (nk - nq)
        scores = scores.masked_fill(hidden, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ t["v"]).numpy()


def _peak_rss() -> int:
    """This process's peak resident memory since the last reset, in bytes (Linux)."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_peak_rss() -> int:
    """Reset the peak-RSS counter to the current RSS (Linux clear_refs) and return that baseline."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss()


def available_bytes() -> int:
    """Memory the kernel reports as available for new allocations."""
    return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024


def bench_one(impl: Implementation, shape: Shape, repeats: int, warmup: int) -> Result:
    """Check ``impl`` against the float64 oracle, then time it over rotating input sets."""
    need = impl.memory_bytes(shape)
    if need > available_bytes() // 2:
        return Result(impl.name, shape, skipped=f"needs ~{need / 2**30:.1f} GiB, more than half the free memory")
    sets = [inputs(shape, seed) for seed in range(max(1, -(-ROTATING_BYTES // shape.input_bytes)))]
    reference = _reference(impl, sets[0], shape.causal)
    baseline = _reset_peak_rss()  # peak memory counts the implementation's own allocations only
    run = impl.make(shape)
    out = run(sets[0])
    error = error_stats("out", out[..., -ORACLE_ROWS:, :], reference).norm_rel
    if error > MAX_ERROR_VS_FP64:
        raise RuntimeError(f"{impl.name} is wrong at {shape}: normwise error {error:.2e} against float64")
    seconds = _median_seconds(run, sets, repeats, warmup)
    return Result(impl.name, shape, seconds, error, max(0, _peak_rss() - baseline))


def _median_seconds(run: Callable[[Feeds], object], sets: list[Feeds], repeats: int, warmup: int) -> float:
    """Median wall time of ``run`` over ``repeats`` calls after ``warmup`` calls, rotating through ``sets``."""
    for i in range(warmup):
        run(sets[i % len(sets)])
    times = []
    for i in range(repeats):
        feeds = sets[i % len(sets)]
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(shapes: list[Shape], repeats: int = 5, warmup: int = 1,
          implementations: tuple[Implementation, ...] = IMPLEMENTATIONS) -> list[Result]:
    """Every implementation at every shape, with a progress line per measurement."""
    results, total = [], len(shapes) * len(implementations)
    for shape in shapes:
        for impl in implementations:
            result = bench_one(impl, shape, repeats, warmup)
            results.append(result)
            done = f"{result.seconds * 1e3:.2f} ms" if result.seconds else f"skipped: {result.skipped}"
            log.info("[%d/%d] %s B=%d H=%d N=%d D=%d causal=%d: %s", len(results), total, impl.name, shape.batch,
                     shape.heads, shape.n, shape.dim, shape.causal, done)
    return results


def cpu_roofline() -> dict[str, float]:
    """The CPU kernel's arithmetic roofline in pair-dims/s (derivation: plugins/cpu/ROOFLINE.md)."""
    mhz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text()))
    lanes, fp_ports, ops_per_pair_dim = 8, 2, 9  # AVX2 float32; two FMA pipes; multiply-class ops, ROOFLINE.md
    cores = os.cpu_count() or 1
    return {"clock_hz": mhz * 1e6, "cores": cores, "lanes": lanes, "fp_ports": fp_ports,
            "ops_per_pair_dim": ops_per_pair_dim,
            "pair_dims_per_second": lanes * fp_ports * mhz * 1e6 * cores / ops_per_pair_dim}


def machine() -> dict[str, str | int]:
    """The machine and versions that set the numbers."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__}


def markdown(results: list[Result], roofline: float) -> str:
    """Results table; 'vs eager' compares with eager float32 at the same shape, measured in the same run."""
    eager = {r.shape: r.seconds for r in results if r.implementation == "eager-fp32" and r.seconds}
    rows = ["| N | D | causal | implementation | median ms | pair-dims/s | % roofline | vs eager | peak MiB | err vs fp64 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.shape
        head = f"| {s.n} | {s.dim} | {int(s.causal)} | {r.implementation} |"
        if r.skipped:
            rows.append(f"{head} skipped: {r.skipped} | | | | | |")
            continue
        share = f"{100 * r.pair_dims_per_second / roofline:.0f}%" if r.implementation in OUR_KERNELS else "n/a"
        rows.append(f"{head} {r.seconds * 1e3:.2f} | {r.pair_dims_per_second:.2e} | {share} | "
                    f"{f'{eager[s] / r.seconds:.1f}x' if s in eager else 'eager skipped'} | "
                    f"{r.peak_bytes / 2**20:.0f} | {r.error_vs_fp64:.1e} |")
    return "\n".join(rows)


def plot(results: list[Result], path: Path) -> None:
    """Throughput (pair-dims/s) against N on log axes, one line per implementation, causal and dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.implementation for r in results):
        for causal in (False, True):
            points = sorted((r.shape.n, r.pair_dims_per_second) for r in results
                            if r.implementation == name and r.shape.causal == causal and r.seconds)
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="--" if causal else "-",
                        label=f"{name}{' causal' if causal else ''}")
    ax.set(xscale="log", yscale="log", xlabel="N (Nq = Nk)", ylabel="pair-dims / s",
           title="FourierAttention throughput, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: list[Result], out: Path) -> None:
    """bench.json (everything), bench.md (machine line and table) and bench.png (throughput plot) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    roofline = cpu_roofline()
    data = {"machine": machine(), "roofline": roofline,
            "results": [{**asdict(r), "pair_dims_per_second": r.pair_dims_per_second} for r in results]}
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    summary = ", ".join(f"{k} {v}" for k, v in machine().items())
    (out / "bench.md").write_text(f"{summary}\n\n{markdown(results, roofline['pair_dims_per_second'])}\n")
    plot(results, out / "bench.png")


@dataclass(frozen=True)
class ModelCase:
    """A whole-model measurement: a named model at a batch (and sequence length for LMs)."""

    model: str
    batch: int
    seq: int | None = None


MODEL_CASES = (ModelCase("deit-tiny", 1), ModelCase("deit-tiny", 64), ModelCase("lm-small", 1, 256))


@dataclass
class ModelResult:
    """Eager float32 and ONNX Runtime (our op) latency of one model case, and their agreement."""

    case: ModelCase
    eager_seconds: float
    onnxruntime_seconds: float
    norm_error: float


def bench_model(case: ModelCase, repeats: int = 3, warmup: int = 1) -> ModelResult:
    """Time the eager model and the ONNX Runtime build of it (FourierAttention as our op) on the same inputs."""
    from export.build import load_model, passes_for, retarget
    from export.onnx_export import export_onnx
    from fourierformer.models import example_inputs

    config, model = load_model(case.model, None, 0)
    proto = retarget(export_onnx(model, config), passes_for("onnxruntime", "plugin", "fp32"))
    session = ort_session(proto.SerializeToString(), plugin_library.ort_library())
    tensors = [example_inputs(config, case.batch, case.seq, seed) for seed in range(2)]
    sets = [{k: v.numpy() for k, v in t.items()} for t in tensors]

    def eager(feeds: Feeds) -> np.ndarray:
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()

    def onnxruntime(feeds: Feeds) -> np.ndarray:
        return session.run(None, feeds)[0]

    error = error_stats("logits", onnxruntime(sets[0]), eager(sets[0])).norm_rel
    if error > MAX_ERROR_VS_FP64:
        raise RuntimeError(f"{case.model}: ONNX Runtime disagrees with eager (normwise error {error:.2e})")
    eager_s = _median_seconds(eager, sets, repeats, warmup)
    ort_s = _median_seconds(onnxruntime, sets, repeats, warmup)
    log.info("%s batch %d: eager %.3f s, onnxruntime %.3f s", case.model, case.batch, eager_s, ort_s)
    return ModelResult(case, eager_s, ort_s, error)


def models_markdown(results: list[ModelResult]) -> str:
    """Model-level table: latency of each, speedup, and the normwise difference of the logits."""
    rows = ["| model | batch | seq | eager fp32 ms | onnxruntime (our op) ms | speedup | logits error vs eager |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r.case.model} | {r.case.batch} | {r.case.seq or '-'} | {r.eager_seconds * 1e3:.1f} | "
             f"{r.onnxruntime_seconds * 1e3:.1f} | {r.eager_seconds / r.onnxruntime_seconds:.1f}x | "
             f"{r.norm_error:.1e} |" for r in results]
    return "\n".join(rows)
