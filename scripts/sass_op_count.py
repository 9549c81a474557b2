#!/usr/bin/env python3
"""Count the instructions the CUDA kernel issues per pair-dim, from its SASS (no GPU needed).

Compiles plugins/cuda/fourier_attention_cuda.cu for one architecture (default sm_90), disassembles the cubin with
nvdisasm, and analyses the phase-1 chunk loop of attention kernel instances (default: dim bucket 64, 64-query tile,
R folded; --instance may be repeated),
the loop that stages one chunk of the sin/cos table and computes 16 dims x a 4 x 4 micro-tile = 256 pair-dims per
thread per iteration. Its code runs once per iteration; loops nested in it (none in the current kernel) are rare
paths, listed and left out. The loop around it (the division and log of the products) runs once per
kChunksPerLog chunk iterations (read from the kernel header). The P V loop is counted per FFMA (one per pair and
output dim). The result is the
thread-instruction count per pair-dim that the issue roofline in plugins/cuda/ROOFLINE.md divides by. Not counted:
the table kernel (one sincos per row and dim of q and k: 2/N of the pair-dims) and per-key-tile work outside the
chunk loop (softmax statistics: per pair, not per pair-dim).

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
KERNEL_HEADER = REPO / "plugins/cuda/fourier_attention_kernel.cuh"
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


def histogram(ops: list[str], indices: set[int]) -> collections.Counter:
    return collections.Counter(ops[i].split(".")[0] for i in indices)


def report(arch: str, instance: str, code: list[tuple[str, str]], labels: dict[str, int]) -> None:
    """Prints the per-pair-dim counts of one kernel instance."""
    found = loops(code, labels)
    ops = [op for op, _ in code]
    chunk = max(found, key=lambda r: own_multiplies(ops, r, found))
    rare = [r for r in found if chunk[0] <= r[0] and r[1] < chunk[1] and r != chunk]
    body = set(range(chunk[0], chunk[1] + 1)) - {i for r in rare for i in range(r[0], r[1] + 1)}
    chunks_per_log = int(re.search(r"kChunksPerLog = (\d+);", KERNEL_HEADER.read_text()).group(1))
    outer = min((r for r in found if r[0] <= chunk[0] and chunk[1] <= r[1] and r != chunk), key=lambda r: r[1] - r[0])
    around = set(range(outer[0], outer[1] + 1)) - set(range(chunk[0], chunk[1] + 1))
    phase1 = histogram(ops, body)
    per_log = histogram(ops, around)
    # phase 2 (P V): the loop outside the chunk loop's enclosing loop richest in FFMA; one FFMA per pair and dim
    pv = max((r for r in found if r[1] < outer[0] or r[0] > outer[1]),
             key=lambda r: sum(op.startswith("FFMA") for op in ops[r[0]:r[1] + 1]))
    pv_per = (pv[1] - pv[0] + 1) / sum(op.startswith("FFMA") for op in ops[pv[0]:pv[1] + 1])
    per_chunk = sum(phase1.values()) / PAIR_DIMS_PER_ITERATION
    per_around = sum(per_log.values()) / (PAIR_DIMS_PER_ITERATION * chunks_per_log)
    print(f"{arch} {instance}: chunk loop {chunk} (rare paths left out: {rare}), around it {outer} "
          f"(once per {chunks_per_log} chunks), P V loop {pv}")
    print(f"per pair-dim: chunk loop (staging, pair-dim block, control) {per_chunk:.2f}, around it (division, log, "
          f"control) {per_around:.2f}, P V {pv_per:.2f}; total {per_chunk + per_around + pv_per:.2f} "
          "thread instructions")
    local = [i for i, op in enumerate(ops) if op.startswith(("LDL", "STL"))]
    print(f"local-memory instructions: chunk loop {sum(i in body for i in local)}, around it "
          f"{sum(i in around for i in local)}, whole kernel {len(local)}")
    print("chunk loop by opcode (per pair-dim):")
    for op, n in phase1.most_common(16):
        print(f"  {op:8s} {n / PAIR_DIMS_PER_ITERATION:6.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--instance", action="append",
                        help="substring of the mangled kernel name, repeatable (default: "
                             "fourier_attention_kernelILi64ELi64ELb1E: dim bucket 64, 64-query tile, R folded)")
    parser.add_argument("--nvdisasm", default=shutil.which("nvdisasm"), help="path to nvdisasm")
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    args = parser.parse_args()
    if not args.nvdisasm:
        sys.exit("nvdisasm not found: pass --nvdisasm (see this script's --help)")
    sass = disassemble(args.arch, args.nvdisasm, args.nvcc)
    for instance in args.instance or ["fourier_attention_kernelILi64ELi64ELb1E"]:
        report(args.arch, instance, *instructions(sass, instance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
