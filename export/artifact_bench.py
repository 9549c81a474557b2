"""bench DIR: time a built artifact the way ``trtexec --loadEngine`` and ``polygraphy run`` do.

For each batch size the artifact is first validated against its eager model or original ONNX file (``validate``'s comparison, the
artifact's own tolerances), then run ``warmup`` times untimed and ``repeats`` times timed on fixed random inputs:
latency percentiles (p50, p90, p99) and throughput (samples per second at the median).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

import export
from export.errors import UserError
from export.artifact import Manifest
from export.runtime import ort_session, random_feeds
from export.validate import validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchTiming:
    """Latency percentiles (ms) and throughput of one batch size, and the validation it passed first."""

    batch: int
    seq: int | None
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples_per_second: float
    max_norm_error: float | None
    """The largest normwise error of the outputs against the reference, from the validation run first (None: a
    plain ONNX file timed as it is, with nothing to compare it with)."""


def _check_counts(repeats: int, warmup: int) -> None:
    """UserError unless there is at least one timed run and no negative warm-up."""
    if repeats < 1 or warmup < 0:
        raise UserError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")


def bench_artifact(directory: Path, batches: list[int | None], seq: int | None, repeats: int, warmup: int,
                   checkpoint: Path | None = None, onnx_file: Path | None = None) -> list[BatchTiming]:
    """Validate, then time the artifact at each batch size (None: the random inputs' default, for a model built
    from an ONNX file without a dimension named batch); UserError if a validation fails."""
    _check_counts(repeats, warmup)
    timings = []
    with export.load(directory) as artifact:
        for batch in batches:
            passed, stats, _ = validate(directory, batch=batch, seq=seq, checkpoint=checkpoint, onnx_file=onnx_file)
            if not passed:
                worst = max(stats, key=lambda s: s.norm_rel)
                raise UserError(f"{directory} fails validation at batch {batch} ({worst.name}: normwise error "
                                f"{worst.norm_rel:.2e}); not timing it")
            feeds = random_feeds(artifact.manifest, batch, seq, seed=1)
            timings.append(_timed(artifact.run, artifact.manifest, feeds, repeats, warmup,
                                  max(s.norm_rel for s in stats)))
    return timings


def _axis_size(manifest: Manifest, feeds: dict[str, np.ndarray], axis: str) -> int | None:
    """The size ``feeds`` give the dimension named ``axis`` (None if no input has one)."""
    for t in manifest.inputs:
        if axis in t.shape:
            return int(feeds[t.name].shape[t.shape.index(axis)])
    return None


def _timed(run: Callable[[dict], object], manifest: Manifest, feeds: dict[str, np.ndarray], repeats: int,
           warmup: int, max_norm_error: float | None) -> BatchTiming:
    """Latency percentiles and throughput of ``run(feeds)`` over ``repeats`` runs after ``warmup`` runs (samples:
    the size of the axis named batch, else the first input's leading axis)."""
    for _ in range(warmup):
        run(feeds)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        seconds.append(time.perf_counter() - start)
    p50, p90, p99 = (float(np.percentile(seconds, q)) * 1e3 for q in (50, 90, 99))
    first = next(iter(feeds.values()))
    batch = _axis_size(manifest, feeds, "batch") or (first.shape[0] if first.ndim else 1)
    length = _axis_size(manifest, feeds, "seq")
    log.info("batch %d: p50 %.3f ms, %.1f samples/s", batch, p50, batch / (p50 / 1e3))
    return BatchTiming(batch, length, p50, p90, p99, batch / (p50 / 1e3), max_norm_error)


def bench_onnx_file(proto: onnx.ModelProto, description: Manifest, batches: list[int | None], seq: int | None,
                    repeats: int, warmup: int) -> list[BatchTiming]:
    """Time an ONNX file (onnx_source.describe_onnx's model and description) as it is, in stock ONNX Runtime (no
    custom ops, nothing fused): the baseline of a ``build-engine --onnx`` build, on the random inputs ``validate``
    would give it."""
    _check_counts(repeats, warmup)
    session = ort_session(proto.SerializeToString(), None)  # the bytes read_onnx checked
    names = [t.name for t in description.outputs]

    def run(feeds: dict[str, np.ndarray]) -> list:
        return session.run(names, feeds)
    return [_timed(run, description, random_feeds(description, batch, seq, seed=1), repeats, warmup, None)
            for batch in batches]


def markdown(timed: Path, timings: list[BatchTiming]) -> str:
    """The timings of an artifact directory or a plain ONNX file as a table."""
    rows = [f"artifact {timed}" if timed.is_dir() else f"ONNX file {timed}, as it is, in stock ONNX Runtime", "",
            "| batch | seq | p50 ms | p90 ms | p99 ms | samples/s | max normwise error vs reference |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {t.batch} | {t.seq or '-'} | {t.p50_ms:.3f} | {t.p90_ms:.3f} | {t.p99_ms:.3f} | "
             f"{t.samples_per_second:.1f} | {'-' if t.max_norm_error is None else f'{t.max_norm_error:.1e}'} |"
             for t in timings]
    return "\n".join(rows)


def to_json(timed: Path, timings: list[BatchTiming]) -> dict:
    """The timings as a JSON-ready document."""
    return {"artifact" if timed.is_dir() else "onnx_file": str(timed), "timings": [asdict(t) for t in timings]}
