#!/usr/bin/env python3
"""Count the instructions the CUDA kernel issues per pair-dim, from its SASS (no GPU needed).

Compiles plugins/cuda/fourier_attention_cuda.cu for one architecture (default sm_90), disassembles the cubin with
nvdisasm, and analyses the phase-1 chunk loop of one kernel instance (default: dim bucket 64, R folded), the loop
that computes 16 dims x a 4 x 4 micro-tile = 256 pair-dims per thread per iteration. Straight-line code in the
loop runs once per iteration; each loop nested in it (the staging of q and k: 64 rows x 16 dims over 256 threads)
runs STAGE_TRIPS times; loops nested deeper are rare paths (huge arguments) and are left out. The result is the
thread-instruction count per pair-dim that the issue roofline in plugins/cuda/ROOFLINE.md divides by.

nvdisasm is not part of the CUDA compiler package: pass --nvdisasm, or put it on PATH (e.g. from the PyPI wheel
nvidia-cuda-nvdisasm, file nvidia/cu13/bin/nvdisasm).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAIR_DIMS_PER_ITERATION = 16 * 16
STAGE_TRIPS = 64 * 16 // 256
INSTRUCTION = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
LABEL = re.compile(r"^\s*\.(L_x_\d+):")


def disassemble(arch: str, nvdisasm: str, nvcc: str) -> str:
    """SASS of the kernel library's .cu for ``arch``."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        subprocess.run([nvcc, "-O3", "-cubin", f"-arch={arch}", f"-I{REPO}/plugins/common", f"-I{REPO}/plugins/cuda",
                        str(REPO / "plugins/cuda/fourier_attention_cuda.cu"), "-o", str(cubin)], check=True)
        return subprocess.run([nvdisasm, "-c", str(cubin)], check=True, capture_output=True, text=True).stdout


def instructions(sass: str, instance: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(opcode, operands) of one kernel function's instructions, and its labels' positions."""
    parts = re.split(r"//-+ \.text\.(\S+) -+", sass)
    body = next((b for name, b in zip(parts[1::2], parts[2::2]) if instance in name), None)
    if body is None:
        sys.exit(f"no kernel function matching {instance!r} in the SASS")
    ops, labels = [], {}
    for line in body.splitlines():
        if m := LABEL.match(line):
            labels[m.group(1)] = len(ops)
        elif m := INSTRUCTION.search(line):
            ops.append((m.group(1), m.group(2)))
    return ops, labels


def loops(code: list[tuple[str, str]], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) instruction index of every loop: a branch back to an earlier label."""
    found = []
    for i, (op, arg) in enumerate(code):
        if op.startswith("BRA") and (m := re.search(r"\.(L_x_\d+)", arg)) and labels.get(m.group(1), i) < i:
            found.append((labels[m.group(1)], i))
    return found


def own_multiplies(ops: list[str], loop: tuple[int, int], found: list[tuple[int, int]]) -> int:
    """FFMA and FMUL instructions of a loop outside the loops nested in it."""
    nested = [i for r in found if r != loop and loop[0] <= r[0] and r[1] <= loop[1] for i in range(r[0], r[1] + 1)]
    return sum(ops[i].startswith(("FFMA", "FMUL")) for i in set(range(loop[0], loop[1] + 1)) - set(nested))


def histogram(ops: list[str], ranges: list[tuple[int, int]], weight: float = 1.0) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for first, last in ranges:
        for op in ops[first:last + 1]:
            counts[op.split(".")[0]] += weight
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--instance", default="fourier_attention_kernelILi64ELb1E",
                        help="substring of the mangled kernel name (default: dim bucket 64, R folded)")
    parser.add_argument("--nvdisasm", default=shutil.which("nvdisasm"), help="path to nvdisasm")
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    args = parser.parse_args()
    if not args.nvdisasm:
        sys.exit("nvdisasm not found: pass --nvdisasm (see this script's --help)")
    code, labels = instructions(disassemble(args.arch, args.nvdisasm, args.nvcc), args.instance)
    found = loops(code, labels)
    ops = [op for op, _ in code]
    chunk = max(found, key=lambda r: own_multiplies(ops, r, found))
    inner = [r for r in found if chunk[0] <= r[0] and r[1] < chunk[1] and r != chunk]
    stage = [r for r in inner if not any(o != r and o[0] <= r[0] and r[1] <= o[1] for o in inner)]
    rare = [r for r in inner if r not in stage]
    straight = histogram(ops, [chunk]) - histogram(ops, stage)
    staged = histogram(ops, stage, STAGE_TRIPS) - histogram(ops, rare, STAGE_TRIPS)
    total = straight + staged
    per = lambda c: sum(c.values()) / PAIR_DIMS_PER_ITERATION  # noqa: E731
    # phase 2 (P V): the loop outside the chunk loop richest in FFMA; one FFMA per pair and output dim
    pv = max((r for r in found if r[1] < chunk[0] or r[0] > chunk[1]),
             key=lambda r: sum(op.startswith("FFMA") for op in ops[r[0]:r[1] + 1]))
    pv_per = (pv[1] - pv[0] + 1) / sum(op.startswith("FFMA") for op in ops[pv[0]:pv[1] + 1])
    print(f"{args.arch} {args.instance}: chunk loop {chunk}, staging loops {stage} x {STAGE_TRIPS}, rare {rare}, "
          f"P V loop {pv}")
    print(f"per pair-dim: pair-dim block + log/div + control {per(straight):.2f}, staging (sin/cos) {per(staged):.2f}, "
          f"P V {pv_per:.2f}; total {per(total) + pv_per:.2f} thread instructions")
    print("phase 1 by opcode (per pair-dim):")
    for op, n in total.most_common(16):
        print(f"  {op:8s} {n / PAIR_DIMS_PER_ITERATION:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
