"""Where a model's time goes: the attention op, matrix products, everything else.

Read from each runtime's own profiler over a few profiled runs (ONNX Runtime's node trace, the PyTorch profiler's
op events), as fractions of the profiled runs' wall time: the benchmark applies them to its unprofiled median, so
the profiler's own overhead does not distort the figures. "Everything else" is the rest of the wall time: the
other operators, and the framework between them (Python dispatch in eager PyTorch, the session in ONNX Runtime).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from fourierformer import opspec

CATEGORIES = ("attention op", "matrix products", "everything else")
ONNX_MATRIX_OPS = frozenset({"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "Einsum",
                             "MatMulInteger", "QLinearMatMul", "MatMulNBits"})
TORCH_MATRIX_OP = re.compile(r"aten::(_?(add)?mm|bmm|baddbmm|addbmm|(add)?mv|matmul|linear|einsum|dot|.*conv.*)$")
Shares = dict[str, float]
"""Fraction of the wall time per category (CATEGORIES), summing to 1."""


def _shares(attention: float, matrix: float, wall: float) -> Shares:
    """The three fractions from the attention and matrix-product seconds within ``wall`` seconds."""
    if wall <= 0:
        raise ValueError("the profiled runs took no time")
    attention, matrix = attention / wall, matrix / wall
    return dict(zip(CATEGORIES, (attention, matrix, max(0.0, 1.0 - attention - matrix))))


def onnxruntime_node_seconds(trace: Path, skip_runs: int = 1) -> tuple[float, float, float]:
    """(attention op, matrix products, whole runs) seconds summed over an ONNX Runtime profile's runs, leaving out
    the first ``skip_runs`` (warm-up) runs."""
    events = json.loads(trace.read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[skip_runs:]
    attention = matrix = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= e["ts"] <= end for start, end in runs):
            continue
        op = e.get("args", {}).get("op_name", "")
        if op == opspec.OP_TYPE:
            attention += e["dur"] * 1e-6
        elif op in ONNX_MATRIX_OPS:
            matrix += e["dur"] * 1e-6
    return attention, matrix, sum(end - start for start, end in runs) * 1e-6


def onnxruntime_shares(make_session: Callable[[Path], object], feeds: dict, runs: int = 3) -> Shares:
    """Shares of one ONNX Runtime model over ``runs`` runs on ``feeds`` after a warm-up run: ``make_session(prefix)``
    returns a session that profiles to files starting with ``prefix``."""
    with tempfile.TemporaryDirectory(prefix="fourierformer-profile-") as tmp:
        session = make_session(Path(tmp) / "ort")
        for _ in range(runs + 1):
            session.run(None, feeds)
        return _shares(*onnxruntime_node_seconds(Path(session.end_profiling())))


def _category(event, attention_op: str) -> str | None:
    """The category an op event's own time belongs to: that of the outermost attention or matrix op around it."""
    found = None
    while event is not None:
        if event.name == attention_op:
            return "attention op"
        if TORCH_MATRIX_OP.match(event.name):
            found = "matrix products"
        event = event.cpu_parent
    return found


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null: the PyTorch profiler's native library prints a line to it at each start
    and stop, whatever the log level."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_shares(run: Callable[[], object], runs: int = 3) -> Shares:
    """Shares of ``run()`` (a PyTorch forward on the CPU), from the PyTorch profiler's op events: each event's
    self time counts for the attention op or the matrix products if it is one or runs inside one."""
    run()  # warm-up, unprofiled
    seconds = dict.fromkeys(CATEGORIES[:2], 0.0)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    with _native_stderr_silenced():
        prof.start()
    try:
        start = time.perf_counter()
        for _ in range(runs):
            run()
        wall = time.perf_counter() - start
    finally:
        with _native_stderr_silenced():
            prof.stop()
    for event in prof.events():
        category = _category(event, opspec.TORCH_OP)
        if category is not None:
            seconds[category] += event.self_cpu_time_total * 1e-6
    return _shares(seconds["attention op"], seconds["matrix products"], wall)
