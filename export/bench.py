"""bench: time FourierAttention implementations on the same inputs, each checked for correctness first.

Honest timing: random non-zero inputs scaled so the weights neither vanish nor saturate, several input
sets rotated between runs (together larger than the last-level cache), warm-up, the median of repeated
runs (CUDA events on a GPU), peak memory per implementation (resident memory on the CPU, the caching
allocator's peak on a GPU), and an implementation is skipped (with the reason in the report) rather than run
where it cannot fit in memory or its runtime is missing. Devices: ``cpu`` (eager, our ONNX Runtime op, our
PyTorch op, softmax SDPA) and ``cuda`` (eager and SDPA in float32 and float16, our CUDA kernel through the
PyTorch op in both, TensorRT engines of the op and of whole models where a TensorRT runtime exists).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import cpu_kernel, cuda_kernel, plugin_library, tensorrt_backend, time_breakdown
from export.artifact import TensorRTInfo
from export.errors import UserError
from export.op_model import attention_inputs, ort_op_model, portable_op_model
from export.options import TOLERANCES, Profiles
from export.runtime import ort_session
from export.time_breakdown import Shares
from export.validate import error_stats
from fourierformer import opspec
from fourierformer.configs import ModelConfig
from fourierformer.attention import fourier_attention_oracle, fourier_attention_reference

log = logging.getLogger(__name__)

MAX_NORM_ERROR = {torch.float32: TOLERANCES["fp32"][2], torch.float16: TOLERANCES["fp16"][2]}
"""Normwise relative error an implementation must meet before it is timed (against the float64 oracle) and a model
variant (against eager float32): the validate command's bounds for the precision."""
ROTATING_BYTES = {"cpu": 64 << 20, "cuda": 256 << 20}
"""Input sets rotate until together they exceed this (larger than the last-level cache: 50 MB on an H100)."""
BASELINE_FP16_MAX_ERROR = 5e-2
"""Check bound of the eager float16 baselines: they multiply D sinc^power factors in float16, so their error grows
with D; they are timed as what model.half() gives users, their error reported, garbage still refused."""
DEVICES = ("cpu", "cuda")
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


Feeds = dict[str, torch.Tensor]
"""q, k, v on the benchmark's device, in the implementation's dtype."""
Runner = Callable[[Feeds], torch.Tensor]


@dataclass(frozen=True)
class Implementation:
    """A way to compute the op: a factory for a runner, its memory need (bytes) at a shape, its input dtype."""

    name: str
    make: Callable[[Shape], Runner]
    memory_bytes: Callable[[Shape], int]
    is_fourier: bool = True
    dtype: torch.dtype = torch.float32
    ours: bool = False
    """One of our kernels: compared with the roofline of our kernel's op count."""
    max_error: float | None = None
    """Bound of the correctness check; None: MAX_NORM_ERROR of the dtype."""
    missing: Callable[[], str | None] | None = None
    """What this machine lacks to run it (None: nothing); the report shows it as the reason for the skip."""


@dataclass
class Result:
    """One implementation at one shape: median seconds, accuracy, peak memory, or why it was skipped."""

    implementation: str
    shape: Shape
    seconds: float | None = None
    error_vs_fp64: float | None = None
    peak_bytes: int | None = None
    skipped: str | None = None
    error_bound: float | None = None
    """The bound error_vs_fp64 was checked against."""

    @property
    def pair_dims_per_second(self) -> float | None:
        return self.shape.pair_dims / self.seconds if self.seconds else None


def _eager(shape: Shape) -> Runner:
    def run(feeds: Feeds) -> torch.Tensor:
        with torch.no_grad():
            return fourier_attention_reference(feeds["q"], feeds["k"], feeds["v"], 1.0, causal=shape.causal)
    return run


def _ort_run(session: ort.InferenceSession, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    """The session's first output for CPU tensors (zero-copy both ways)."""
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


def _onnxruntime(shape: Shape) -> Runner:
    session = ort_session(ort_op_model({"causal": int(shape.causal)}).SerializeToString(), plugin_library.ort_library())
    return lambda feeds: _ort_run(session, feeds)


def _torch_op(shape: Shape) -> Runner:
    from export.torch_op import fourier_attention

    attrs = (opspec.POWER.default, opspec.EPS.default, shape.causal)  # as the eager reference; R = 1 as the inputs
    return lambda feeds: fourier_attention(feeds["q"], feeds["k"], feeds["v"], 1.0, *attrs)


def _sdpa(shape: Shape) -> Runner:
    def run(feeds: Feeds) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(feeds["q"], feeds["k"], feeds["v"],
                                                                    is_causal=shape.causal)
    return run


def tensorrt_missing() -> str | None:
    """None if TensorRT engines can be built and run here, else what is missing."""
    if tensorrt_backend.installed_flavour() is None:
        return "no TensorRT runtime (neither the tensorrt nor the tensorrt_rtx package is installed)"
    if (reason := tensorrt_backend.gpu_missing_reason()) is not None:
        return f"running a TensorRT engine needs an NVIDIA GPU: {reason}"
    return None


def _device_inference(runner) -> Callable[[Feeds], Feeds]:
    """Activate a Polygraphy TrtRunner; returns outputs-by-name of a run on device tensors (deactivated when the
    returned function is collected)."""
    runner.activate()

    def infer(feeds: Feeds) -> Feeds:
        return runner.infer(feeds, copy_outputs_to_host=False)
    weakref.finalize(infer, runner.deactivate)
    return infer


def _engine_inference(proto: onnx.ModelProto, profiles: Profiles,
                      library: Path | None) -> Callable[[Feeds], Feeds]:
    """_device_inference of an engine built from ``proto`` for this GPU (in a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, engine_path = Path(tmp) / "model.onnx", Path(tmp) / "model.engine"
        onnx.save(proto, onnx_path)
        trt = tensorrt_backend.build_engine(onnx_path, engine_path, profiles, [], library, None)
        built_with = TensorRTInfo(trt.flavour, trt.version, [], {})
        runner = tensorrt_backend.tensorrt_runner(engine_path.read_bytes(), built_with, library)
    return _device_inference(runner)


def op_engine_source(shape: Shape, precision: str) -> tuple[onnx.ModelProto, Profiles, Path | None]:
    """The op's model in the installed TensorRT's form (our plugin with tensorrt, decomposed with tensorrt_rtx),
    its profile fixed to ``shape``, and the plugin library it needs (None when decomposed)."""
    from export.builder import passes_for, retarget

    attention = "plugin" if tensorrt_backend.load_tensorrt().holds_plugins else "decomposed"
    library = plugin_library.trt_plugin_library() if attention == "plugin" else None
    proto = retarget(portable_op_model(shape.dim, {"causal": int(shape.causal)}),
                     passes_for("tensorrt", attention, precision))
    sizes = {"B": shape.batch, "H": shape.heads, "Nq": shape.n, "Nk": shape.n}
    return proto, {name: (n, n, n) for name, n in sizes.items()}, library


def _tensorrt(precision: str) -> Callable[[Shape], Runner]:
    """Our op as a TensorRT engine built for the shape on this GPU (op_engine_source); timed through Polygraphy's
    runner on device tensors, its per-call Python work included."""
    def make(shape: Shape) -> Runner:
        infer = _engine_inference(*op_engine_source(shape, precision))
        return lambda feeds: infer(feeds)["out"]
    return make


def _tensor_bytes(shape: Shape, per_pair: int, itemsize: int = 4) -> int:
    return shape.batch * shape.heads * shape.n * shape.n * per_pair * itemsize


IMPLEMENTATIONS = {
    "cpu": (
        # the eager model keeps about four [B,H,N,N,D] float32 tensors alive at its peak
        Implementation("eager-fp32", _eager, lambda s: 4 * _tensor_bytes(s, s.dim)),
        Implementation("onnxruntime-op", _onnxruntime, lambda s: 4 * s.input_bytes, ours=True),
        Implementation("torch-op", _torch_op, lambda s: 4 * s.input_bytes, ours=True),
        Implementation("sdpa-fp32 (softmax)", _sdpa, lambda s: 3 * _tensor_bytes(s, 1), is_fourier=False),
    ),
    "cuda": (
        Implementation("eager-fp32", _eager, lambda s: 4 * _tensor_bytes(s, s.dim)),
        Implementation("eager-fp16", _eager, lambda s: 4 * _tensor_bytes(s, s.dim, 2), dtype=torch.float16,
                       max_error=BASELINE_FP16_MAX_ERROR),
        Implementation("cuda-op-fp32", _torch_op, lambda s: 2 * s.input_bytes, ours=True),
        Implementation("cuda-op-fp16", _torch_op, lambda s: s.input_bytes, dtype=torch.float16, ours=True),
        Implementation("tensorrt-fp32", _tensorrt("fp32"), lambda s: 2 * s.input_bytes, missing=tensorrt_missing),
        Implementation("tensorrt-fp16", _tensorrt("fp16"), lambda s: s.input_bytes, dtype=torch.float16,
                       missing=tensorrt_missing),
        Implementation("sdpa-fp32 (softmax)", _sdpa, lambda s: 3 * _tensor_bytes(s, 1), is_fourier=False),
        Implementation("sdpa-fp16 (softmax)", _sdpa, lambda s: 3 * _tensor_bytes(s, 1, 2), is_fourier=False,
                       dtype=torch.float16),
    ),
}
"""Per device; sdpa is PyTorch's softmax attention at the same shape, what Fourier attention replaces. The torch
op runs our CPU kernel on the CPU and our CUDA kernel on a GPU (export/torch_op.py); the TensorRT engines run our
CUDA kernel in our plugin (tensorrt), or the op decomposed into standard layers (tensorrt_rtx)."""


def check_device(device: str) -> None:
    """UserError naming what is missing unless the benchmark can run on ``device``."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; choose from {list(DEVICES)}")
    if device == "cuda" and (missing := cuda_kernel.available()) is not None:
        raise UserError(f"bench --device cuda {missing}")


def inputs(shape: Shape, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Feeds:
    """Random non-zero q, k, v for ``shape`` (R = 1), scaled so row sums stay far above eps."""
    arrays = attention_inputs(shape.batch, shape.heads, shape.n, shape.n, shape.dim, R=1.0, seed=seed)
    return {k: torch.from_numpy(v).to(device=device, dtype=dtype) for k, v in arrays.items()}


def rotating_inputs(shape: Shape, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[Feeds]:
    """Input sets for timing, together larger than ROTATING_BYTES[device] (so a run is not cache-hot)."""
    count = max(1, -(-ROTATING_BYTES[device] // (shape.input_bytes * dtype.itemsize // 4)))
    return [inputs(shape, seed, device, dtype) for seed in range(count)]


def _reference(impl: Implementation, feeds: Feeds, causal: bool) -> np.ndarray:
    """Float64 truth for the last ORACLE_ROWS query rows (bottom-right alignment keeps their causal mask)."""
    t = {k: v.cpu().double() for k, v in feeds.items()}
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


def available_bytes(device: str = "cpu") -> int:
    """Memory available for new allocations on ``device``."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024


def _reset_peak(device: str) -> int:
    """Start counting peak memory on ``device``; returns the baseline."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _reset_peak_rss()


def _peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss()


def bench_one(impl: Implementation, shape: Shape, repeats: int, warmup: int, device: str = "cpu") -> Result:
    """Check ``impl`` against the float64 oracle, then time it over rotating input sets."""
    if impl.missing is not None and (missing := impl.missing()) is not None:
        return Result(impl.name, shape, skipped=missing)
    need = impl.memory_bytes(shape)
    if need > available_bytes(device) // 2:
        return Result(impl.name, shape, skipped=f"needs ~{need / 2**30:.1f} GiB, more than half the free memory")
    sets = rotating_inputs(shape, device, impl.dtype)
    reference = _reference(impl, sets[0], shape.causal)
    baseline = _reset_peak(device)  # peak memory counts the implementation's own allocations only
    run = impl.make(shape)
    out = run(sets[0])
    error = error_stats("out", out[..., -ORACLE_ROWS:, :].float().cpu().numpy(), reference).norm_rel
    bound = impl.max_error or MAX_NORM_ERROR[impl.dtype]
    if not error <= bound:
        raise RuntimeError(f"{impl.name} is wrong at {shape}: normwise error {error:.2e} against float64")
    seconds = median_seconds(run, sets, repeats, warmup, device)
    return Result(impl.name, shape, seconds, error, max(0, _peak(device) - baseline), error_bound=bound)


def median_seconds(run: Callable[[Feeds], object], sets: list[Feeds], repeats: int, warmup: int,
                   device: str = "cpu") -> float:
    """Median time of ``run`` over ``repeats`` calls after ``warmup`` calls, rotating through ``sets``.

    On a GPU each call is timed by CUDA events around it on the current stream (device time, launch included).
    """
    for i in range(warmup):
        run(sets[i % len(sets)])
    times = []
    for i in range(repeats):
        feeds = sets[i % len(sets)]
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(feeds)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            run(feeds)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(shapes: list[Shape], repeats: int = 5, warmup: int = 1, device: str = "cpu",
          implementations: tuple[Implementation, ...] | None = None) -> list[Result]:
    """Every implementation at every shape, with a progress line per measurement."""
    check_device(device)
    implementations = IMPLEMENTATIONS[device] if implementations is None else implementations
    results, total = [], len(shapes) * len(implementations)
    for shape in shapes:
        for impl in implementations:
            result = bench_one(impl, shape, repeats, warmup, device)
            results.append(result)
            done = f"{result.seconds * 1e3:.3f} ms" if result.seconds else f"skipped: {result.skipped}"
            log.info("[%d/%d] %s B=%d H=%d N=%d D=%d causal=%d: %s", len(results), total, impl.name, shape.batch,
                     shape.heads, shape.n, shape.dim, shape.causal, done)
    return results


CPU_OPS_PER_PAIR_DIM = {"avx512": (0.5625, 0.1875), "avx2": (1.125, 0.5), "baseline": (2.25, 3.75)}
"""Per path: (FMA-unit ops, other vector ops) the CPU kernel issues per pair-dim, from its disassembly
(scripts/cpu_op_count.py, g++ 12; plugins/cpu/ROOFLINE.md). Recount when the kernel changes."""


def cpu_ports(vendor: str, isa: str) -> tuple[int, int]:
    """(FMA-unit ports, vector-ALU ports) per core for a path's vector width (plugins/cpu/ROOFLINE.md).

    Intel cores since Skylake-SP: FMA on ports 0 and 1, vector ALUs on 0, 1 and 5 for 128/256-bit; for 512-bit
    ops ports 0 and 1 fuse, so 2 and 2 (server parts with the second 512-bit FMA unit on port 5). AMD Zen 2-4: FMA
    and multiply on 2 of 4 FP pipes, every FP op on any of the 4; Zen 4 splits a 512-bit op into two 256-bit ones.
    """
    if vendor == "AuthenticAMD":
        return (1, 2) if isa == "avx512" else (2, 4)
    return (2, 2) if isa == "avx512" else (2, 3)


def cpu_roofline() -> dict[str, float | str]:
    """The CPU kernel's roofline in pair-dims/s for the path that runs (derivation: plugins/cpu/ROOFLINE.md):
    cores x clock / the cycles per pair-dim its ops need on the ports of this vendor's cores."""
    text = Path("/proc/cpuinfo").read_text()
    mhz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text))
    vendor = next(iter(re.findall(r"vendor_id\s*:\s*(\S+)", text)), "unknown")
    isa = cpu_kernel.isa()
    fma_ops, other_ops = CPU_OPS_PER_PAIR_DIM[isa]
    fma_ports, alu_ports = cpu_ports(vendor, isa)
    cycles = max(fma_ops / fma_ports, (fma_ops + other_ops) / alu_ports)
    cores = os.cpu_count() or 1
    return {"isa": isa, "vendor": vendor, "clock_hz": mhz * 1e6, "cores": cores, "fma_ops_per_pair_dim": fma_ops,
            "other_ops_per_pair_dim": other_ops, "fma_ports": fma_ports, "alu_ports": alu_ports,
            "cycles_per_pair_dim": cycles, "pair_dims_per_second": cores * mhz * 1e6 / cycles}


CUDA_INSTRUCTIONS_PER_PAIR_DIM = 14.28
"""Thread instructions the CUDA kernel issues per pair-dim (bucket 64, sm_90 SASS: scripts/sass_op_count.py;
plugins/cuda/ROOFLINE.md). Recount when the kernel changes."""


def cuda_roofline() -> dict[str, float]:
    """The CUDA kernel's issue roofline in pair-dims/s: SMs x 128 lanes x max SM clock / instructions per pair-dim.

    Every instruction takes an issue slot (4 schedulers x 32 threads per SM per clock), FP32 or not; the
    clock is the GPU's maximum SM clock from nvidia-smi (derivation: plugins/cuda/ROOFLINE.md).
    """
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    query = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
                           capture_output=True, text=True)
    clock_hz = float(query.stdout.strip()) * 1e6
    return {"sms": sms, "clock_hz": clock_hz, "lanes_per_sm": 128,
            "instructions_per_pair_dim": CUDA_INSTRUCTIONS_PER_PAIR_DIM,
            "pair_dims_per_second": sms * 128 * clock_hz / CUDA_INSTRUCTIONS_PER_PAIR_DIM}


def roofline(device: str) -> dict[str, float]:
    """The roofline of our kernel on ``device`` (pair_dims_per_second and how it was derived)."""
    return cuda_roofline() if device == "cuda" else cpu_roofline()


def machine(device: str = "cpu") -> dict[str, str | int]:
    """The machine and versions that set the numbers."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    info: dict[str, str | int] = {"cpu": cpu, "cores": os.cpu_count() or 1, "cpu_kernel_path": cpu_kernel.isa(),
                                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                  "onnxruntime": ort.__version__}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=str(torch.version.cuda))
    return info


def markdown(results: list[Result], roofline_rate: float, device: str) -> str:
    """Results table; 'vs eager' compares with eager float32 at the same shape, measured in the same run, and
    '% roofline' our kernels' throughput with ``roofline_rate``."""
    ours = {i.name for i in IMPLEMENTATIONS[device] if i.ours}
    eager = {r.shape: r.seconds for r in results if r.implementation == "eager-fp32" and r.seconds}
    rows = ["| N | D | causal | implementation | median ms | pair-dims/s | % roofline | vs eager | peak MiB | err vs fp64 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.shape
        head = f"| {s.n} | {s.dim} | {int(s.causal)} | {r.implementation} |"
        if r.skipped:
            rows.append(f"{head} skipped: {r.skipped} | | | | | |")
            continue
        share = f"{100 * r.pair_dims_per_second / roofline_rate:.0f}%" if r.implementation in ours else "n/a"
        rows.append(f"{head} {r.seconds * 1e3:.2f} | {r.pair_dims_per_second:.2e} | {share} | "
                    f"{f'{eager[s] / r.seconds:.1f}x' if s in eager else 'eager skipped'} | "
                    f"{r.peak_bytes / 2**20:.0f} | {r.error_vs_fp64:.1e} |")
    return "\n".join(rows)


def plot(results: list[Result], path: Path, device: str = "cpu") -> None:
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
           title=f"FourierAttention throughput, {device.upper()}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def records(results: list[Result]) -> list[dict]:
    """The results as bench.json holds them (what scripts/gpu_summary.py reads)."""
    return [{**asdict(r), "pair_dims_per_second": r.pair_dims_per_second} for r in results]


def write_report(results: list[Result], out: Path, device: str = "cpu") -> None:
    """bench.json (everything), bench.md (machine line and table) and bench.png (throughput plot) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    line = roofline(device)
    info = machine(device)
    data = {"device": device, "machine": info, "roofline": line, "results": records(results)}
    (out / "bench.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    summary = ", ".join(f"{k} {v}" for k, v in info.items())
    (out / "bench.md").write_text(f"{summary}\n\n{markdown(results, line['pair_dims_per_second'], device)}\n")
    plot(results, out / "bench.png", device)


@dataclass(frozen=True)
class ModelCase:
    """A whole-model measurement: a named model at a batch (and sequence length for LMs)."""

    model: str
    batch: int
    seq: int | None = None


MODEL_CASES = (ModelCase("deit-tiny", 1), ModelCase("deit-tiny", 64), ModelCase("lm-small", 1, 256),
               ModelCase("lm-medium", 1, 384))


@dataclass
class ModelResult:
    """Median seconds and output error (logits or log-probs) against eager float32 of each variant of one model case."""

    case: ModelCase
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Variants this machine cannot run, with what it lacks."""
    shares: dict[str, Shares] = field(default_factory=dict)
    """Where the time goes (time_breakdown.CATEGORIES), per variant a profiler sees into."""


def _no_grad(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(**inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(**inputs)
    return run


@dataclass(frozen=True)
class Variant:
    """A model variant: runner taking the model's named inputs, the dtype of its float inputs, its check bound, and
    where it can be profiled, the fractions of its time per category on given inputs."""

    run: Callable[..., torch.Tensor]
    dtype: torch.dtype
    bound: float
    shares: Callable[[dict[str, torch.Tensor]], Shares] | None = None


def _tensorrt_model(case: ModelCase) -> Callable[..., torch.Tensor]:
    """The model as a float16 TensorRT engine for the case's batch (and sequence length), built as build-engine
    builds it (our plugin with tensorrt, attention decomposed with tensorrt_rtx), run on device tensors."""
    from export.builder import build_engine
    from export.options import BuildOptions
    from export.runtime import load_artifact

    shapes = {"batch": (case.batch,) * 3, **({"seq": (case.seq,) * 3} if case.seq else {})}
    with tempfile.TemporaryDirectory() as tmp:
        build_engine(BuildOptions(case.model, Path(tmp) / "engine", backend="tensorrt", precision="fp16",
                                  seed=0, shapes=shapes))  # the weights bench_model's eager model has
        artifact = load_artifact(Path(tmp) / "engine")
    manifest = artifact.manifest
    infer = _device_inference(artifact.polygraphy_runner())
    dtypes = {t.name: torch.from_numpy(np.empty(0, np.dtype(t.dtype))).dtype for t in manifest.inputs}
    output = manifest.outputs[0].name

    def run(**inputs: torch.Tensor) -> torch.Tensor:
        return infer({name: value.to(dtypes[name]) for name, value in inputs.items()})[output]
    return run


def _model_variants(model: torch.nn.Module, config: ModelConfig, case: ModelCase, device: str,
                    example: dict[str, torch.Tensor]) -> dict[str, Variant | str]:
    """The variants timed against eager float32 on ``device``, by name; what is missing for those that cannot run."""
    from export.builder import passes_for, retarget
    from export.onnx_export import export_onnx
    from export.torch_op import fuse

    fused = fuse(copy.deepcopy(model))
    if device == "cpu":
        fused_run = _no_grad(fused)
        model_bytes = retarget(export_onnx(model, config),
                               passes_for("onnxruntime", "plugin", "fp32")).SerializeToString()
        session = ort_session(model_bytes, plugin_library.ort_library())

        def onnxruntime(**inputs: torch.Tensor) -> torch.Tensor:
            return _ort_run(session, inputs)

        def onnxruntime_shares(inputs: dict[str, torch.Tensor]) -> Shares:
            return time_breakdown.onnxruntime_shares(
                lambda prefix: ort_session(model_bytes, plugin_library.ort_library(), profile_prefix=prefix),
                {name: value.numpy() for name, value in inputs.items()})
        bound = MAX_NORM_ERROR[torch.float32]
        return {"onnxruntime (our op)": Variant(onnxruntime, torch.float32, bound, onnxruntime_shares),
                "torch + our op": Variant(fused_run, torch.float32, bound,
                                          lambda inputs: time_breakdown.torch_shares(lambda: fused_run(**inputs)))}
    half_example = {k: (v.half() if v.is_floating_point() else v) for k, v in example.items()}
    missing = tensorrt_missing()
    return {"eager fp16": Variant(_no_grad(copy.deepcopy(model).half()), torch.float16, BASELINE_FP16_MAX_ERROR),
            "our op fp16 + CUDA graph": Variant(_graphed(fused.half(), half_example), torch.float16,
                                                MAX_NORM_ERROR[torch.float16]),
            "tensorrt fp16": missing or Variant(_tensorrt_model(case), torch.float16, MAX_NORM_ERROR[torch.float16])}


def _graphed(fn: Callable[..., torch.Tensor], example: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` captured once into a CUDA graph; calls copy their inputs into the graph's and replay it."""
    static = {k: v.clone() for k, v in example.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # warm-up outside the graph (allocations, lazy initialization)
            fn(**static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = fn(**static)

    def replay(**inputs: torch.Tensor) -> torch.Tensor:
        for k, v in inputs.items():
            static[k].copy_(v)
        graph.replay()
        return out
    return replay


def bench_model(case: ModelCase, repeats: int = 3, warmup: int = 1, device: str = "cpu") -> ModelResult:
    """Time the eager float32 model and its variants (our kernels) on the same inputs, each checked first.

    CPU: the ONNX Runtime build (FourierAttention as our op) and the PyTorch model with our op (fuse()).
    CUDA: eager float16, the fused model in float16 with our CUDA kernel replayed from a CUDA graph, and a float16
    TensorRT engine where a TensorRT runtime exists (else reported as skipped, with what is missing).
    """
    from export.builder import load_model
    from fourierformer.models import example_inputs

    check_device(device)
    loaded = load_model(case.model, None, 0)
    config, model = loaded.config, loaded.model.to(device)
    sets = [{k: v.to(device) for k, v in example_inputs(config, case.batch, case.seq, seed).items()}
            for seed in range(2)]
    eager = _no_grad(model)
    variants = _model_variants(model, config, case, device, sets[0])
    result = ModelResult(case, device)
    expected = eager(**sets[0]).double().cpu().numpy()
    result.seconds["eager fp32"] = median_seconds(lambda feeds: eager(**feeds), sets, repeats, warmup, device)
    for name, variant in variants.items():
        if isinstance(variant, str):
            result.skipped[name] = variant
            log.info("%s batch %d: %s skipped: %s", case.model, case.batch, name, variant)
            continue
        typed = [{k: (v.to(variant.dtype) if v.is_floating_point() else v) for k, v in feeds.items()}
                 for feeds in sets]
        error = error_stats("output", variant.run(**typed[0]).double().cpu().numpy(), expected).norm_rel
        if not error <= variant.bound:
            raise RuntimeError(f"{case.model}: {name} disagrees with eager float32 (normwise error {error:.2e})")
        result.errors[name] = error
        result.seconds[name] = median_seconds(lambda feeds: variant.run(**feeds), typed, repeats, warmup, device)
        if variant.shares is not None:
            result.shares[name] = variant.shares(typed[0])
        log.info("%s batch %d: eager fp32 %.4f s, %s %.4f s", case.model, case.batch, result.seconds["eager fp32"],
                 name, result.seconds[name])
    return result


def models_markdown(results: list[ModelResult]) -> str:
    """Model-level table: latency of each variant, its speedup over eager float32, and its output error."""
    rows = ["| model | batch | seq | device | variant | median ms | speedup vs eager fp32 | output error vs eager |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = r.seconds["eager fp32"]
        head = f"| {r.case.model} | {r.case.batch} | {r.case.seq or '-'} | {r.device} |"
        for name, seconds in r.seconds.items():
            error = f"{r.errors[name]:.1e}" if name in r.errors else "-"
            rows.append(f"{head} {name} | {seconds * 1e3:.2f} | {base / seconds:.1f}x | {error} |")
        rows += [f"{head} {name} | skipped: {why} | | |" for name, why in r.skipped.items()]
    return "\n".join(rows)


def breakdown_markdown(results: list[ModelResult]) -> str:
    """Where each profiled variant's median goes: ms and share per time_breakdown category; "" if none was."""
    categories = time_breakdown.CATEGORIES
    rows = [f"| model | batch | seq | variant | median ms | {' | '.join(f'{c} ms (share)' for c in categories)} |",
            "|---|---|---|---|---|" + "---|" * len(categories)]
    for r in results:
        for name, shares in r.shares.items():
            ms = r.seconds[name] * 1e3
            cells = " | ".join(f"{ms * shares[c]:.2f} ({shares[c]:.0%})" for c in categories)
            rows.append(f"| {r.case.model} | {r.case.batch} | {r.case.seq or '-'} | {name} | {ms:.2f} | {cells} |")
    return "\n".join(rows) if len(rows) > 2 else ""
