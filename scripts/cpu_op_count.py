#!/usr/bin/env python3
"""Count the vector operations the CPU kernel issues per pair-dim, per instruction-set path, from its disassembly.

Disassembles libfourierformer_cpu.so (objdump) and finds each path's loop over dims: of the loops in registers of
the path's width (zmm avx512, ymm avx2, xmm baseline), the innermost one with the most float compares, one per query row of
the widest row block (R folded: the common case). An iteration computes rows x lanes keys pair-dims. Its vector instructions are classed as

  fma    multiplies and FMAs (the FMA units),
  other  adds, subtractions, compares, blends, logic (any vector ALU port),
  moves  register-to-register copies (often eliminated at rename; reported, not counted),
  loads  instructions that only load (load ports; a memory operand of an arithmetic instruction costs nothing here).

Per pair-dim: fma and other over the iteration's pair-dims, plus 1/lanes FMA for the P·V accumulation (one FMA per
pair and output dim, outside the loop). Not counted: per-chunk division and log, per-pair exp and the softmax update,
the prepare phase (O(N) against O(N^2)). ``python -m export bench`` divides its CPU roofline by these counts
(export/bench.py, CPU_OPS_PER_PAIR_DIM, which a test checks against this script's output); plugins/cpu/ROOFLINE.md
derives the port model. With --mca, llvm-mca's cycle estimate of the loop is added.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTHS = {"zmm": ("avx512", 16), "ymm": ("avx2", 8), "xmm": ("baseline", 4)}
FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")
INSTRUCTION = re.compile(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$")
COMPARE = re.compile(r"^v?cmp(?:n?l[te]|n?g[te]|unord|ord|eq|neq)?ps$")
FMA = re.compile(r"^v?(?:fn?m(?:add|sub)\d{3}ps|mulps)$")


def functions(disassembly: str) -> list[list[tuple[int, str, str]]]:
    """The instructions of every function: (address, mnemonic, operands)."""
    found, current = [], None
    for line in disassembly.splitlines():
        if FUNCTION.match(line):
            current = []
            found.append(current)
        elif not line.strip():
            current = None
        elif current is not None and (match := INSTRUCTION.match(line)):
            current.append((int(match.group(1), 16), match.group(2), match.group(3)))
    return found


def loops(code: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """The bodies of ``code``'s innermost loops (a backward branch with no other backward branch inside)."""
    branches = []
    for address, mnemonic, operands in code:
        target = re.match(r"([0-9a-f]+)", operands)
        if mnemonic.startswith("j") and target and int(target.group(1), 16) < address:
            branches.append((int(target.group(1), 16), address))
    return [[ins for ins in code if start <= ins[0] <= end] for start, end in branches
            if not any(start <= s and e < end for s, e in branches if (s, e) != (start, end))]


def compares(body: list[tuple[int, str, str]]) -> int:
    return sum(bool(COMPARE.match(m)) for _, m, _ in body)


def width(body: list[tuple[int, str, str]]) -> str:
    """The widest vector register the loop names."""
    text = " ".join(operands for _, _, operands in body)
    return next(w for w in WIDTHS if f"%{w}" in text)


def classify(mnemonic: str, operands: str) -> str | None:
    """fma, other, moves, loads, or None (scalar and control instructions)."""
    vector = re.search(r"%[xyz]mm|%k\d", operands)
    if not vector:
        return None
    memory_source = "(" in operands.split(",")[0] if "," in operands else "(" in operands
    if mnemonic.startswith(("vmovap", "vmovup", "movap", "movup", "vbroadcast", "vmovdqa", "vmovdqu")) or \
            mnemonic in ("movss", "vmovss"):
        if "{" in operands:  # a masked move is a blend
            return "other"
        if memory_source:
            return "loads"
        if "(" in operands:  # a store
            return None
        return "moves"
    return "fma" if FMA.match(mnemonic) else "other"


def count(library: Path, mca: bool) -> dict[str, dict]:
    """Per path: rows, lanes, the loop's class counts, and fma/other per pair-dim."""
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(library)], check=True,
                                 capture_output=True, text=True).stdout
    # Each path's dim loop: of the innermost loops of its width, the one with the most compares (one per row: the widest
    # row block), the smallest such.
    dim_loops: dict[str, list[tuple[int, str, str]]] = {}
    for code in functions(disassembly):
        for body in loops(code):
            if compares(body) == 0 or not re.search(r"%[xyz]mm", " ".join(o for _, _, o in body)):
                continue
            path = WIDTHS[width(body)][0]
            best = dim_loops.get(path)
            if best is None or (compares(body), -len(body)) > (compares(best), -len(best)):
                dim_loops[path] = body
    per_path: dict[str, dict] = {}
    for path, lanes in WIDTHS.values():
        if (body := dim_loops.get(path)) is None:
            continue
        rows = compares(body)
        classes = collections.Counter(c for _, m, o in body if (c := classify(m, o)))
        pair_dims = rows * lanes
        entry = {"rows": rows, "lanes": lanes, "instructions": len(body), **{k: classes[k] for k in
                 ("fma", "other", "moves", "loads")},
                 "fma_per_pair_dim": round(classes["fma"] / pair_dims + 1 / lanes, 4),
                 "other_per_pair_dim": round(classes["other"] / pair_dims, 4)}
        if mca and shutil.which("llvm-mca"):
            entry["llvm_mca_cycles_per_iteration"] = llvm_mca(body)
        per_path[path] = entry
    return per_path


def llvm_mca(body: list[tuple[int, str, str]]) -> float:
    """llvm-mca's cycles per iteration of the loop, with an Intel server model (icelake-server)."""
    lines = [".Lloop:"]
    for _, mnemonic, operands in body:
        operands = re.sub(r"\s*<.*>", "", operands)
        lines.append("jne .Lloop" if mnemonic.startswith("j") else f"{mnemonic} {operands}")
    with tempfile.NamedTemporaryFile("w", suffix=".s") as source:
        source.write("\n".join(lines) + "\n")
        source.flush()
        report = subprocess.run(["llvm-mca", "-mcpu=icelake-server", "-iterations=300", source.name],
                                capture_output=True, text=True, check=True).stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", report).group(1))
    return round(cycles / 300, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, help="libfourierformer_cpu.so (default: this installation's)")
    parser.add_argument("--mca", action="store_true", help="add llvm-mca's cycle estimate (if llvm-mca is on PATH)")
    args = parser.parse_args()
    if args.library is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from export import plugin_library

        args.library = plugin_library.cpu_library()
    print(json.dumps(count(args.library, args.mca), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
