#!/usr/bin/env python3
"""The one summary table at the end of scripts/gpu_checks.sh, from the logs it wrote.

Reads LOGS/test_cuda_kernel.xml (pytest's JUnit report of the GPU tests), LOGS/bench-cuda/bench.json (the op
benchmark) and LOGS/tensorrt.log (what TensorRT the machine had), and prints: the GPU tests' outcome, parity per
dtype (worst normwise error of our kernel against the float64 oracle over every timed shape, beside its bound),
then per shape our kernel's pair-dims/s in float32 and float16 with its speedup over eager PyTorch in the same
dtype, the model benchmark's table (LOGS/bench-cuda-models/bench-models.md), and whether TensorRT was present.
Standard library only: the GPU machine may lack the project's packages.

    python3 scripts/gpu_summary.py LOGS
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OURS = {"float32": "cuda-op-fp32", "float16": "cuda-op-fp16"}
EAGER = {"float32": "eager-fp32", "float16": "eager-fp16"}


def tests_line(xml: Path) -> str:
    """'GPU tests: N passed, F failed, S skipped' from a JUnit report, or why there is none."""
    if not xml.is_file():
        return f"GPU tests: no report ({xml.name} missing)"
    suites = ET.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return f"GPU tests: {total - failed - skipped} passed, {failed} failed, {skipped} skipped"


def _shape_key(shape: dict) -> tuple:
    return shape["batch"], shape["heads"], shape["n"], shape["dim"], shape["causal"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def bench_lines(report: Path) -> list[str]:
    """Parity per dtype and the per-shape throughput table from bench.json."""
    if not report.is_file():
        return [f"op benchmark: no report ({report} missing)"]
    results = json.loads(report.read_text())["results"]
    by = {(r["implementation"], _shape_key(r["shape"])): r for r in results}
    shapes = sorted({_shape_key(r["shape"]) for r in results}, key=lambda s: (s[4], s[2] * s[3], s))
    lines = []
    for dtype, name in OURS.items():
        ours = [r for r in results if r["implementation"] == name]
        checked = [r for r in ours if r["error_vs_fp64"] is not None]
        worst = max(checked, key=lambda r: r["error_vs_fp64"], default=None)
        parity = "not measured" if worst is None else (
            f"worst normwise error {worst['error_vs_fp64']:.1e} (bound {worst['error_bound']:.0e})")
        lines.append(f"parity {dtype}: {parity} over {len(checked)} shapes, {len(ours) - len(checked)} skipped")
    lines += ["", "| B,H,N,D | causal | ours fp32 pair-dims/s | vs eager fp32 | ours fp16 pair-dims/s "
              "| vs eager fp16 |", "|---|---|---|---|---|---|"]
    for shape in shapes:
        cells = []
        for dtype in OURS:
            ours, eager = by.get((OURS[dtype], shape), {}), by.get((EAGER[dtype], shape), {})
            speedup = eager["seconds"] / ours["seconds"] if ours.get("seconds") and eager.get("seconds") else None
            rate = _fmt(ours.get("pair_dims_per_second"), ".2e") if ours.get("seconds") else (
                f"skipped: {ours['skipped']}" if ours.get("skipped") else "-")
            cells += [rate, "-" if speedup is None else f"{speedup:.1f}x"]
        b, h, n, d, causal = shape
        lines.append(f"| {b},{h},{n},{d} | {'yes' if causal else 'no'} | " + " | ".join(cells) + " |")
    return lines


def tensorrt_line(log: Path) -> str:
    """The tensorrt step's one line (gpu_checks.sh's tensorrt_info), or that it did not run."""
    text = log.read_text().strip() if log.is_file() else ""
    return text.splitlines()[-1] if text else "TensorRT: not checked (no tensorrt.log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", type=Path, help="the folder gpu_checks.sh wrote ($OUT or ./gpu_checks_logs)")
    logs = parser.parse_args(argv).logs
    if not logs.is_dir():
        print(f"gpu_summary: {logs} is not a folder", file=sys.stderr)
        return 2
    models = logs / "bench-cuda-models" / "bench-models.md"
    print("\n".join([tests_line(logs / "test_cuda_kernel.xml"), *bench_lines(logs / "bench-cuda" / "bench.json"), "",
                     models.read_text().strip() if models.is_file() else f"model benchmark: no report ({models})",
                     "", tensorrt_line(logs / "tensorrt.log")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
