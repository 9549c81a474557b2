#!/usr/bin/env python3
"""Where the CPU kernel's time goes, per shape: what limits it short of the roofline.

For each shape, on the rotating non-vacuous inputs ``python -m export bench`` times (together over 64 MiB, so no
run is cache-hot; R = 1, power and eps the op's defaults), medians after warm-up of

  prepare      ff_cpu_prepare over every item, one thread (sin/cos of R*q and R*k, the repacking: O(N*D));
  one thread   ff_cpu_prepare + ff_cpu_compute over everything, one thread (the native entry points, no pool);
  pool         the whole op as the torch op runs it (checks, a workspace per call, the library's thread pool),
               at 1 and at --threads threads.

From these: prepare's share of the one-thread time, the compute-only rate per core (visible pair-dims over one
thread's time less prepare; compare it across D to see the per-pair work that D dims amortize), the pool's cost
over the native path at one thread, and its scaling from 1 to --threads threads. Both ways of running the kernel
must give the same output (checked, bitwise). plugins/cpu/ROOFLINE.md reads these figures against the roofline.
The path is the library's (FF_CPU_ISA forces one).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import bench, cpu_kernel  # noqa: E402
from export.errors import UserError  # noqa: E402
from export.kernel_api import DTYPES, Params  # noqa: E402
from fourierformer import opspec  # noqa: E402

R, POWER, EPS = 1.0, opspec.POWER.default, opspec.EPS.default
"""The op's attributes here: R = 1 as bench's inputs are drawn for."""
DEFAULT_SHAPES = ("1,8,256,16,1", "1,8,384,32,1", "1,3,197,64,0", "1,4,1024,64,0", "1,4,64,64,0", "1,8,256,16,0",
                  "1,1,1024,16,0", "1,1,1024,32,0", "1,1,1024,64,0", "1,1,1024,128,0")


@dataclass(frozen=True)
class Split:
    """One shape's figures (seconds, pair-dims/s of visible pairs)."""

    shape: str
    prepare_s: float
    one_thread_s: float
    pool_1_s: float
    pool_n_s: float
    threads: int
    pair_dims: int

    @property
    def prepare_share(self) -> float:
        return self.prepare_s / self.one_thread_s

    @property
    def compute_rate_per_core(self) -> float:
        return self.pair_dims / (self.one_thread_s - self.prepare_s)

    @property
    def pool_cost(self) -> float:
        """The pool's time at one thread over the native path's, less 1 (checks, allocation, dispatch)."""
        return self.pool_1_s / self.one_thread_s - 1

    @property
    def scaling(self) -> float:
        return self.pool_1_s / self.pool_n_s

    def record(self) -> dict[str, float | int | str]:
        """The figures and the shares derived from them, for JSON."""
        return asdict(self) | {name: getattr(self, name) for name in DERIVED}


DERIVED = ("prepare_share", "compute_rate_per_core", "pool_cost", "scaling")


def parse_shape(text: str) -> bench.Shape:
    """``B,H,N,D,causal`` (causal 0 or 1) as a bench Shape."""
    try:
        batch, heads, n, dim, causal = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,N,D,causal (five integers), got {text!r}") from None
    if min(batch, heads, n, dim) < 1 or causal not in (0, 1):
        raise argparse.ArgumentTypeError(f"B, H, N, D must be positive and causal 0 or 1, got {text!r}")
    return bench.Shape(batch, heads, n, dim, bool(causal))


def label(shape: bench.Shape) -> str:
    """``B,H,N,D``, and `` causal`` where it is."""
    return f"{shape.batch},{shape.heads},{shape.n},{shape.dim}{' causal' if shape.causal else ''}"


def split(shape: bench.Shape, repeats: int, warmup: int, threads: int) -> Split:
    """Times prepare, prepare + compute on one thread, and the pooled op at 1 and ``threads`` threads."""
    lib, dtype = cpu_kernel.library(), DTYPES[torch.float32]
    p = Params(shape.batch, shape.heads, shape.n, shape.n, shape.dim, R, POWER, EPS, int(shape.causal))
    pp = ctypes.byref(p)
    if (error := lib.ff_validate_params(pp)) is not None:
        raise UserError(f"{label(shape)}: {error.decode()}")
    # float64 draws of q, k, v, the float32 sets, out and the workspace: half the free memory at most, as bench
    need = 2 * shape.input_bytes + max(bench.ROTATING_BYTES["cpu"], shape.input_bytes) + lib.ff_cpu_workspace_size(pp)
    if need > bench.available_bytes() // 2:
        raise UserError(f"{label(shape)} needs ~{need / 2**30:.1f} GiB, more than half the free memory")
    sets = bench.rotating_inputs(shape)
    workspace, ws = cpu_kernel.aligned_workspace(p)  # ``workspace`` owns the memory at ``ws``: keep it alive
    out = torch.empty_like(sets[0]["q"])
    items, rows = lib.ff_cpu_prepare_items(pp), lib.ff_cpu_rows(pp)

    def prepare(feeds: bench.Feeds) -> None:
        lib.ff_cpu_prepare(pp, dtype, feeds["q"].data_ptr(), feeds["k"].data_ptr(), feeds["v"].data_ptr(), ws, 0, items)

    def one_thread(feeds: bench.Feeds) -> None:
        prepare(feeds)
        lib.ff_cpu_compute(pp, dtype, ws, out.data_ptr(), 0, rows)

    def pooled(feeds: bench.Feeds) -> torch.Tensor:
        return cpu_kernel.fourier_attention_cpu(feeds["q"], feeds["k"], feeds["v"], R, POWER, EPS, shape.causal)

    prepare_s = bench.median_seconds(prepare, sets, repeats, warmup)
    one_thread_s = bench.median_seconds(one_thread, sets, repeats, warmup)
    one_thread(sets[0])  # ``out`` now holds sets[0]'s result, which the pooled op must reproduce
    pool_s = {}
    before = torch.get_num_threads()
    try:
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            pool_s[n] = bench.median_seconds(pooled, sets, repeats, warmup)
            if not torch.equal(pooled(sets[0]), out):
                raise SystemExit(f"{shape}: the pooled op at {n} threads differs from ff_cpu_prepare + ff_cpu_compute")
    finally:
        torch.set_num_threads(before)
    return Split(shape=label(shape), prepare_s=prepare_s, one_thread_s=one_thread_s, pool_1_s=pool_s[1],
                 pool_n_s=pool_s[threads], threads=threads, pair_dims=shape.pair_dims)


def markdown(splits: list[Split]) -> str:
    """The figures as a table."""
    rows = ["| B,H,N,D | prepare ms | 1 thread ms | prepare share | compute pair-dims/s per core | "
            "pool ms, 1 thread | pool cost | pool ms, n threads | scaling | pool pair-dims/s, n threads |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in splits:
        rows.append(f"| {s.shape} | {s.prepare_s * 1e3:.3f} | {s.one_thread_s * 1e3:.3f} | {100 * s.prepare_share:.0f}% | "
                    f"{s.compute_rate_per_core:.2e} | {s.pool_1_s * 1e3:.3f} | {100 * s.pool_cost:+.0f}% | "
                    f"{s.pool_n_s * 1e3:.3f} | "
                    f"{s.scaling:.2f}x ({s.threads}) | {s.pair_dims / s.pool_n_s:.2e} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", metavar="B,H,N,D,causal",
                        default=[parse_shape(s) for s in DEFAULT_SHAPES],
                        help="shapes to split (default: the paper's model shapes, the bench defaults, a D sweep)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per figure (median; default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of the pooled run (default: every core)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1, --warmup at least 0")
    splits = []
    try:
        machine = bench.machine()
        for i, shape in enumerate(args.shapes, 1):
            print(f"[{i}/{len(args.shapes)}] {label(shape)}", file=sys.stderr, flush=True)
            splits.append(split(shape, args.repeats, args.warmup, args.threads))
    except UserError as error:  # the library could not be built, FF_CPU_ISA is refused, or a shape cannot run
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"machine": machine, "splits": [s.record() for s in splits]}))
    else:
        print(", ".join(f"{k} {v}" for k, v in machine.items()))
        print(markdown(splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
