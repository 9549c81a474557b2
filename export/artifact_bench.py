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

import numpy as np

import export
from export.errors import UserError
from export.runtime import random_feeds
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
    max_norm_error: float
    """The largest normwise error of the outputs against the eager model, from the validation run first."""


def bench_artifact(directory: Path, batches: list[int | None], seq: int | None, repeats: int, warmup: int,
                   checkpoint: Path | None = None, onnx_file: Path | None = None) -> list[BatchTiming]:
    """Validate, then time the artifact at each batch size (None: the random inputs' default, for a model built
    from an ONNX file without a dimension named batch); UserError if a validation fails."""
    if repeats < 1 or warmup < 0:
        raise UserError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    timings = []
    with export.load(directory) as artifact:
        for batch in batches:
            passed, stats, _ = validate(directory, batch=batch, seq=seq, checkpoint=checkpoint, onnx_file=onnx_file)
            if not passed:
                worst = max(stats, key=lambda s: s.norm_rel)
                raise UserError(f"{directory} fails validation at batch {batch} ({worst.name}: normwise error "
                                f"{worst.norm_rel:.2e}); not timing it")
            feeds = random_feeds(artifact.manifest, batch, seq, seed=1)
            batch = next(iter(feeds.values())).shape[0]  # the samples of one run
            for _ in range(warmup):
                artifact.run(feeds)
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                artifact.run(feeds)
                seconds.append(time.perf_counter() - start)
            p50, p90, p99 = (float(np.percentile(seconds, q)) * 1e3 for q in (50, 90, 99))
            length = int(feeds["tokens"].shape[1]) if "tokens" in feeds else None
            timings.append(BatchTiming(batch, length, p50, p90, p99, batch / (p50 / 1e3),
                                       max(s.norm_rel for s in stats)))
            log.info("batch %d: p50 %.3f ms, %.1f samples/s", batch, p50, batch / (p50 / 1e3))
    return timings


def markdown(directory: Path, timings: list[BatchTiming]) -> str:
    """The timings as a table."""
    rows = [f"artifact {directory}", "",
            "| batch | seq | p50 ms | p90 ms | p99 ms | samples/s | max normwise error vs eager |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {t.batch} | {t.seq or '-'} | {t.p50_ms:.3f} | {t.p90_ms:.3f} | {t.p99_ms:.3f} | "
             f"{t.samples_per_second:.1f} | {t.max_norm_error:.1e} |" for t in timings]
    return "\n".join(rows)


def to_json(directory: Path, timings: list[BatchTiming]) -> dict:
    """The timings as a JSON-ready document."""
    return {"artifact": str(directory), "timings": [asdict(t) for t in timings]}
