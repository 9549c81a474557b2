"""The command line: ``python -m export <command>``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator

from export.errors import UserError, one_line
from export.options import EXAMPLE_SIZE, MAX_SEED

log = logging.getLogger("export")

DESCRIPTION = """\
Deploy FourierFormer models: export to ONNX with one FourierAttention node per
attention layer, retarget the graph to a backend, build a verified artifact.

typical use:
  {prog} build-engine --model tiny-vit --out engines/built/tiny-vit
  {prog} validate engines/built/tiny-vit
  {prog} run engines/built/tiny-vit --input in.npz --output out.npz
  {prog} serve engines/built/tiny-vit                     # Triton Inference Server, HTTP and gRPC
  {prog} build-engine --checkpoint output/checkpoint.pth   # trained with the official DeiT code
  {prog} build-engine --checkpoint LM-TFM/model.pt         # trained with the official LM code
"""

EXIT_OK, EXIT_VALIDATION_FAILED, EXIT_USER_ERROR = 0, 1, 2
EXTRA_OF = {**dict.fromkeys(("torch", "onnx", "onnxscript", "onnx_graphsurgeon", "polygraphy", "safetensors"), "export"),
            "onnxruntime": "onnxruntime", "matplotlib": "plot", "pytriton": "serve", "tritonclient": "serve"}
"""The package extra that installs each optional top-level module the commands import."""


def _model_help() -> str:
    from fourierformer.configs import CONFIGS

    return "model name: " + ", ".join(CONFIGS)


CHECKPOINT_HELP = ("weights to deploy: DeiT's training checkpoint.pth, the language model's model.pt (the whole "
                   "pickled MemTransformerLM), a plain state_dict (.pt/.pth) or a .safetensors file; its "
                   "architecture is read from the file, or matched against --model (default: random weights)")


def _add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=_model_help() + " (optional with a --checkpoint that says its architecture)")
    parser.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    parser.add_argument("--ema", action="store_true", help="deploy the checkpoint's EMA copy (DeiT's model_ema)")
    parser.add_argument("--seed", type=_integer(0, MAX_SEED), default=0, help="seed of the random weights without --checkpoint (default 0)")


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path,
                        help="the checkpoint the artifact was built from, for the eager model (its manifest records "
                             "the path and sha256, but no path in a manifest is followed)")
    parser.add_argument("--onnx", type=Path,
                        help="the ONNX file the artifact was built from (build-engine --onnx): the reference, run in "
                             "stock ONNX Runtime (recorded by sha256; no path in a manifest is followed); bench --onnx FILE "
                             "without DIR times the file itself")


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=_integer(1), help=f"batch of the random inputs (default {EXAMPLE_SIZE}; "
                        "for a model built from an ONNX file: its dynamic dimension named batch)")
    parser.add_argument("--seq", type=_integer(1), help="sequence length of random LM inputs (default: the model's "
                        f"context; for a model built from an ONNX file: its dimension named seq, default {EXAMPLE_SIZE})")
    parser.add_argument("--input-seed", type=_integer(0, MAX_SEED), help="seed of the random inputs (default 0)")



class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``error: ...``, exit 2), like every other error."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in low..high."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value
    return parse


def _tolerance(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _finite(value: object) -> object:
    """``value`` with non-finite floats as None (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print_json(args: argparse.Namespace, document: object) -> None:
    """One JSON document on the real stdout (``--json``: everything else printed meanwhile went to stderr)."""
    print(json.dumps(_finite(document), indent=2, sort_keys=True, allow_nan=False), file=args.stdout)


def cmd_models(args: argparse.Namespace) -> int:
    """Print every named model and its config."""
    from fourierformer.configs import CONFIGS, config_to_dict

    if args.json:
        _print_json(args, {name: config_to_dict(config) for name, config in CONFIGS.items()})
        return EXIT_OK
    for name, config in CONFIGS.items():
        print(f"{name:10s} {config}")
    return EXIT_OK


def cmd_build_plugins(args: argparse.Namespace) -> int:
    """Build the C++ plugin libraries (normally done on first use)."""
    from export.plugin_library import build_plugins

    print(build_plugins(force=args.force))
    return EXIT_OK


def cmd_onnx(args: argparse.Namespace) -> int:
    """Export the portable ONNX model (custom-domain FourierAttention nodes), or with --plain a plain one."""
    import onnx
    import onnx_graphsurgeon as gs

    from export.artifact import check_creatable, write_atomically
    from export.builder import load_model
    from export.onnx_export import export_onnx
    from export.passes import cleanup

    check_creatable(args.out, "the ONNX model")
    loaded = load_model(args.model, args.checkpoint, args.seed, args.ema)
    proto = gs.export_onnx(cleanup(gs.import_onnx(export_onnx(loaded.model, loaded.config, args.opset, args.plain))))
    onnx.checker.check_model(proto)
    write_atomically(args.out, proto.SerializeToString(), "the ONNX model")
    print(args.out)
    return EXIT_OK


def _profile(text: str) -> tuple[str, tuple[int, int, int]]:
    """Parse ``name=min:opt:max`` (or ``name=size`` for a fixed size)."""
    problem = argparse.ArgumentTypeError(f"expected NAME=MIN:OPT:MAX, e.g. batch=1:8:64; got {text!r}")
    try:
        name, sizes = text.split("=")
        values = tuple(int(v) for v in sizes.split(":"))
    except ValueError:
        raise problem from None
    if len(values) not in (1, 3):
        raise problem
    return name, values * 3 if len(values) == 1 else values


def _capabilities(text: str) -> tuple[int, ...]:
    """Parse ``86,89`` into compute capabilities."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected compute capabilities such as 86,89; got {text!r}") from None


BUILD_DEFAULTS = {"backend": "auto", "precision": "fp32", "attention": "auto", "shapes": {}, "compute_capabilities": ()}


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build an artifact directory for a backend (settings: flags over --recipe over defaults)."""
    from export.builder import build_engine, resolve_backend
    from export.options import BuildOptions
    from export.recipes import load_recipe

    if args.explain:
        return _explain(args)

    settings = {**BUILD_DEFAULTS, **(load_recipe(args.recipe) if args.recipe else {})}
    flags = {"model": args.model, "backend": args.backend, "precision": args.precision, "attention": args.attention,
             "compute_capabilities": args.compute_capability}
    settings.update({k: v for k, v in flags.items() if v is not None})
    backend = resolve_backend(settings["backend"])
    if backend != "tensorrt":
        _refuse((("--shapes", args.shapes), ("--compute-capability", args.compute_capability),
                 ("--timing-cache", args.timing_cache)), f"only applies to the tensorrt backend; this build's is {backend}")
    settings["shapes"] = {**settings["shapes"], **dict(args.shapes or [])}
    options = BuildOptions(settings.get("model"), args.out, settings["backend"], settings["precision"],
                           settings["attention"], args.checkpoint, args.seed, args.opset, settings["shapes"] or None,
                           tuple(settings["compute_capabilities"]), args.timing_cache,
                           args.ema, args.onnx)
    out, manifest = build_engine(options)
    fused = f", {manifest.fused_layers} attention layer(s) fused" if manifest.fused_layers is not None else ""
    check = f" --onnx {args.onnx}" if args.onnx else ""
    print(f"built {out} ({manifest.model}: {manifest.backend}, {manifest.precision}, {manifest.attention} attention"
          f"{fused}); check it with: {_prog()} validate {out}{check}")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    """build-engine --onnx FILE --explain: what the fuse pass matched in FILE and why it left the rest alone."""
    from export.onnx_source import fused_source

    if args.onnx is None:
        raise UserError("--explain lists what the fuse pass finds in an ONNX file: give --onnx FILE")
    print("\n".join(fused_source(args.onnx).report.lines()))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run an artifact on inputs from an .npz file (or random ones) and save or summarize the outputs."""
    import numpy as np

    from export.artifact import check_regular_file, write_atomically
    from export.runtime import load_artifact, load_npz, max_input_bytes, random_feeds

    artifact = load_artifact(args.artifact)
    manifest = artifact.manifest
    if args.input:
        _refuse((("--batch", args.batch is not None), ("--seq", args.seq is not None),
                 ("--input-seed", args.input_seed is not None)), "applies to random inputs, not to --input")
        feeds = load_npz(args.input, max_input_bytes(manifest))
    else:
        feeds = random_feeds(manifest, args.batch, args.seq, args.input_seed or 0)
    try:
        outputs = artifact.run(feeds)
    finally:
        artifact.close()
    if args.output:
        check_regular_file(args.output, "the outputs")  # the name given, before .npz is added
        args.output = args.output if args.output.suffix == ".npz" else args.output.with_name(args.output.name + ".npz")
        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        write_atomically(args.output, buffer.getvalue(), "the outputs")
    summary = {name: {"shape": list(value.shape), "dtype": str(value.dtype), "mean": float(value.mean()),
                      "std": float(value.std())} for name, value in outputs.items()}
    if args.json:
        _print_json(args, {"artifact": str(args.artifact), "output_file": str(args.output) if args.output else None,
                     "outputs": summary})
        return EXIT_OK
    if args.output:
        print(args.output)
    for name, value in summary.items():
        print(f"{name}: shape {value['shape']} {value['dtype']}, mean {value['mean']:.6g}, std {value['std']:.6g}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Compare an artifact with the eager PyTorch model; exit 1 on mismatch."""
    from export.validate import validate

    passed, stats, (atol, rtol, max_norm) = validate(args.artifact, args.batch, args.seq,
                                                     args.input_seed or 0, args.atol, args.rtol, args.max_norm_error,
                                                     args.checkpoint, args.onnx)
    if args.json:
        _print_json(args, {"artifact": str(args.artifact), "passed": passed,
                     "tolerances": {"atol": atol, "rtol": rtol, "max_norm_error": max_norm},
                     "outputs": {s.name: {"max_abs": s.max_abs, "max_rel": s.max_rel, "norm_rel": s.norm_rel}
                                 for s in stats}})
        return EXIT_OK if passed else EXIT_VALIDATION_FAILED
    print(f"{'output':12s} {'max abs':>10s} {'max rel':>10s} {'norm rel':>10s}")
    for s in stats:
        print(f"{s.name:12s} {s.max_abs:10.3e} {s.max_rel:10.3e} {s.norm_rel:10.3e}")
    print(f"{'PASSED' if passed else 'FAILED'}: atol={atol:g} rtol={rtol:g} max-norm-error={max_norm:g}")
    return EXIT_OK if passed else EXIT_VALIDATION_FAILED


def _shape(text: str):
    """Parse ``B,H,N,D`` into a bench Shape."""
    from export.bench import Shape

    try:
        batch, heads, n, dim = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,N,D (four integers), got {text!r}") from None
    if min(batch, heads, n, dim) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return Shape(batch, heads, n, dim)


def cmd_bench(args: argparse.Namespace) -> int:
    """Time the op's implementations on a device; print the table, write JSON, Markdown and a plot with --out."""
    from dataclasses import replace

    from export.bench import (MODEL_CASES, bench, bench_model, breakdown_markdown, check_device, machine, markdown,
                              models_markdown, roofline, write_report)

    if args.artifact is not None or args.onnx is not None:
        return _bench_artifact(args)
    _refuse((("--batch", args.batch), ("--seq", args.seq), ("--json", args.json), ("--checkpoint", args.checkpoint)),
            "applies to timing an artifact (bench DIR) only")
    args.device = args.device or "cpu"
    check_device(args.device)
    if args.out:
        from export.artifact import check_creatable

        check_creatable(args.out / "bench.json", "the report")  # before the timing, not after it
    print(", ".join(f"{k} {v}" for k, v in machine(args.device).items()))
    if args.models:
        repeats, warmup = 3 if args.repeats is None else args.repeats, 1 if args.warmup is None else args.warmup
        results = [bench_model(case, repeats, warmup, args.device) for case in MODEL_CASES]
        table = models_markdown(results)
        if breakdown := breakdown_markdown(results):
            table += ("\n\nWhere the time goes (shares from each runtime's profiler, applied to the median):\n\n"
                      + breakdown)
        print(table)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench-models.md").write_text(table + "\n")
        return EXIT_OK
    repeats, warmup = args.repeats if args.repeats is not None else 5, args.warmup if args.warmup is not None else 1
    sizes = args.sizes or [_shape(f"{DEFAULT_BENCH_BATCH[args.device]},{n},64") for n in (256, 1024, 4096, 16384)]
    shapes = [replace(shape, causal=causal) for shape in sizes for causal in sorted({False, args.causal})]
    results = bench(shapes, repeats, warmup, args.device)
    print(markdown(results, roofline(args.device)["pair_dims_per_second"], args.device))
    if args.out:
        write_report(results, args.out, args.device)
        print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return EXIT_OK


def cmd_triton(args: argparse.Namespace) -> int:
    """Write a Triton model repository for an artifact."""
    from pathlib import PurePosixPath

    from export.serving.repository import write_repository

    out = write_repository(args.artifact, args.out, args.name, args.max_batch, args.instances,
                           PurePosixPath(args.server_path) if args.server_path else None)
    if args.json:
        _print_json(args, {"artifact": str(args.artifact), "model": str(out)})
        return EXIT_OK
    print(f"wrote {out} (see {out / 'README.md'}); start a server with: tritonserver --model-repository="
          f"{args.server_path or out.parent.absolute()}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an artifact from a Triton Inference Server on this machine until stopped."""
    from export.serving.server import Ports, serve

    def ready(shape, ports: Ports, log_file: Path | None) -> None:
        print(f"serving {shape.name} at http://{ports.address}:{ports.http} and {ports.address}:{ports.grpc} "
              f"(gRPC); metrics at http://{ports.address}:{ports.metrics}/metrics; batches up to {shape.max_batch}"
              + (f"; server log {log_file}" if log_file else "") + "; Ctrl-C stops", file=args.stdout, flush=True)

    ports = Ports(args.address, args.http_port, args.grpc_port, args.metrics_port)
    serve(args.artifact, ports, args.name, args.max_batch, args.instances, ready, AT_STOP.append, args.verbose)
    return EXIT_OK


DEFAULT_BENCH_BATCH = {"cpu": "1,4", "cuda": "4,8"}
"""B,H of the default bench sizes per device."""


def _bench_artifact(args: argparse.Namespace) -> int:
    """bench DIR: validate, then time a built artifact per batch size (latency percentiles, throughput); bench
    --onnx FILE without DIR: time the file as it is in stock ONNX Runtime."""
    from export import artifact_bench
    from export.artifact import load_manifest
    from export.onnx_source import describe_onnx

    _refuse((("--device", args.device), ("--sizes", args.sizes), ("--causal", args.causal), ("--models", args.models),
             ("--out", args.out)), "applies to the op benchmark, not to timing an artifact (bench DIR)")
    timed = args.artifact or args.onnx
    proto, manifest = (None, load_manifest(args.artifact)) if args.artifact is not None else describe_onnx(args.onnx)
    low, high = manifest.dynamic_ranges.get("batch", (1, 1))
    batches = args.batch or (sorted({low, min(max(low, 8), high)}) if "batch" in manifest.dynamic_ranges
                             or manifest.config is not None else [None])
    repeats, warmup = 50 if args.repeats is None else args.repeats, 5 if args.warmup is None else args.warmup
    if args.artifact is None:
        _refuse((("--checkpoint", args.checkpoint),), "applies to an artifact (bench DIR)")
        timings = artifact_bench.bench_onnx_file(proto, manifest, batches, args.seq, repeats, warmup)
    else:
        timings = artifact_bench.bench_artifact(args.artifact, batches, args.seq, repeats, warmup, args.checkpoint,
                                                args.onnx)
    if args.json:
        _print_json(args, artifact_bench.to_json(timed, timings))
    else:
        print(artifact_bench.markdown(timed, timings))
    return EXIT_OK


def _prog() -> str:
    """The name the tool was called by: ``python -m export`` or the ``fourierformer-deploy`` console script."""
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m export" if called in ("", "__main__.py", "-m") else called


def _version() -> str:
    try:
        return importlib.metadata.version("fourierformer-deploy")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _verbosity() -> argparse.ArgumentParser:
    """-v/-q as a parent parser for the top level and every command (SUPPRESS: a command's parser does not reset
    a value given before the command)."""
    parser = _Parser(add_help=False)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logs and tracebacks")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress lines, errors only")
    return parser


def _refuse(flags: tuple[tuple[str, object], ...], why: str) -> None:
    """UserError naming each flag given (a truthy value) where it does not apply."""
    given = [flag for flag, value in flags if value]
    if given:
        raise UserError(f"{', '.join(given)} {why}")


def _add_serving(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="the model's name on the server (default: the artifact's model)")
    parser.add_argument("--max-batch", type=_integer(1), help="largest batch Triton forms (default 64, or the "
                                                            "artifact's largest if smaller)")
    parser.add_argument("--instances", type=_integer(1, 64), default=1, help="model instances (default 1)")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from export.options import ATTENTIONS, BACKENDS, OPSET, OPSETS, PRECISIONS, TOLERANCES, default_timing_cache
    from export.recipes import recipe_names

    prog = _prog()
    parser = _Parser(prog=prog, description=DESCRIPTION.format(prog=prog), parents=[_verbosity()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(verbose=False, quiet=False)  # on its own actions: the commands' must stay SUPPRESS
    verbosity = _verbosity()
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        """A subcommand's parser, taking -v/-q after the command too."""
        return commands.add_parser(name, parents=[verbosity], **kwargs)

    p = command("models", help="list the named models and their configs")
    _add_json(p)
    p.set_defaults(func=cmd_models)

    p = command("build-plugins", help="build the C++ plugin libraries (done automatically on first use)")
    p.add_argument("--force", action="store_true", help="rebuild even if the sources did not change")
    p.set_defaults(func=cmd_build_plugins)

    p = command("onnx", help="export a model to portable ONNX with FourierAttention custom nodes")
    _add_weights(p)
    p.add_argument("--opset", type=_integer(*OPSETS), default=OPSET, help=f"ONNX opset, {OPSETS[0]} to {OPSETS[1]} (default {OPSET})")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--plain", action="store_true",
                   help="write the attention in standard ONNX ops, as a plain torch.onnx.export does (runs in stock "
                        "ONNX Runtime; build-engine --onnx fuses it back)")
    p.set_defaults(func=cmd_onnx)

    p = command("build-engine", help="build a verified deployment artifact directory (the main job)",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Export, retarget to the backend, build (TensorRT) or smoke-run (ONNX Runtime), and "
                            "write DIR atomically:\nthe ONNX model, the engine, the plugin library and "
                            "manifest.json (hashes, shapes, versions).",
                epilog="examples:\n"
                       f"  {prog} build-engine --model tiny-vit\n"
                       f"  {prog} build-engine --checkpoint output/checkpoint.pth    # official DeiT\n"
                       f"  {prog} build-engine --checkpoint LM-TFM/model.pt          # official LM\n"
                       f"  {prog} build-engine --recipe deit-tiny-fp16\n"
                       f"  {prog} build-engine --model tiny-lm --backend tensorrt --precision fp16 \\\n"
                       "      --shapes batch=1:4:8 seq=1:64:64 --compute-capability 86,89\n"
                       f"  {prog} build-engine --onnx my_vit.onnx                   # your own model, exported plainly\n"
                       f"  {prog} build-engine --onnx my_vit.onnx --explain         # what attention it finds, and why")
    _add_weights(p)
    p.add_argument("--onnx", type=Path, help="build from your ONNX file (a plain torch.onnx.export of any "
                                             "FourierFormer) instead of a named model: its Fourier attention is "
                                             "fused into FourierAttention nodes")
    p.add_argument("--explain", action="store_true",
                   help="with --onnx: list each attention candidate, what matched and why any was not fused; "
                        "build nothing")
    p.add_argument("--recipe", help=f"settings from a shipped recipe ({', '.join(recipe_names())}) or a .toml file; "
                                    "flags override it")
    p.add_argument("--backend", choices=("auto", *BACKENDS),
                   help="target runtime; auto: tensorrt where a TensorRT runtime and GPU exist, else onnxruntime")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32 (default) or fp16: a strongly typed float16 network")
    p.add_argument("--attention", choices=("auto", *ATTENTIONS),
                   help="plugin: our fused custom op; decomposed: standard ONNX ops (any runtime, TensorRT-RTX); "
                        "auto (default): plugin, except decomposed on TensorRT-RTX")
    p.add_argument("--shapes", type=_profile, nargs="+", metavar="NAME=MIN:OPT:MAX",
                   help="TensorRT optimization profile per dynamic dimension (default batch=1:1:16, seq=1:CONTEXT:CONTEXT; "
                        "with --onnx: one for each of the file's dynamic dimensions, by its name)")
    p.add_argument("--compute-capability", type=_capabilities, metavar="CC[,CC]",
                   help="TensorRT-RTX: build ahead of time for these GPUs, e.g. 86,89 (no GPU needed)")
    p.add_argument("--timing-cache", type=Path,
                   help=f"TensorRT timing cache, read and updated (default {default_timing_cache()})")
    p.add_argument("--opset", type=_integer(*OPSETS), default=OPSET, help=f"ONNX opset, {OPSETS[0]} to {OPSETS[1]} (default {OPSET})")
    p.add_argument("--out", type=Path, help="artifact directory (default engines/built/MODEL[-ema]-BACKEND-PRECISION, "
                                            "the backend resolved)")
    p.set_defaults(func=cmd_build_engine)

    p = command("run", help="run an artifact on inputs from an .npz file or on random inputs")
    p.add_argument("artifact", type=Path, help="artifact directory from build-engine")
    p.add_argument("--input", type=Path, help=".npz with one array per model input (default: random inputs)")
    p.add_argument("--output", type=Path, help="write the outputs to this .npz")
    _add_inputs(p)
    _add_json(p)
    p.set_defaults(func=cmd_run)

    p = command("validate", help="compare an artifact with the eager PyTorch model (exit 1 on mismatch)",
                description="Feed the same random inputs to the artifact and to the eager model rebuilt from "
                            "the manifest; compare with Polygraphy. An element fails if it exceeds both atol "
                            "and rtol; an output fails if ||out-eager||/||eager|| exceeds --max-norm-error.")
    p.add_argument("artifact", type=Path, help="artifact directory from build-engine")
    _add_inputs(p)
    defaults = "; ".join(f"{p}: {t[0]:g}, {t[1]:g}, {t[2]:g}" for p, t in TOLERANCES.items())
    p.add_argument("--atol", type=_tolerance, help="absolute tolerance")
    p.add_argument("--rtol", type=_tolerance, help="relative tolerance")
    p.add_argument("--max-norm-error", type=_tolerance,
                   help=f"normwise relative error bound per output (defaults atol, rtol, norm by precision: {defaults})")
    _add_source(p)
    _add_json(p)
    p.set_defaults(func=cmd_validate)

    p = command("triton", help="write a Triton Inference Server model repository for an artifact",
                description="Write REPO/NAME/: config.pbtxt (inputs and outputs from the manifest, the batch axis as "
                            "max_batch_size, dynamic batching, instance groups), the model as version 1, our "
                            "plugin library, SHA256SUMS and a README saying how to start tritonserver (ONNX "
                            "Runtime backend with our custom op, or TensorRT backend with our plugin).",
                epilog=f"example:\n  {prog} triton engines/built/deit-tiny-onnxruntime-fp32 --out models --max-batch 32",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="artifact directory from build-engine")
    p.add_argument("--out", type=Path, required=True, help="the model repository (other models in it are left alone)")
    _add_serving(p)
    p.add_argument("--server-path", help="where the server will see the repository, e.g. /models in a container "
                                         "(default: its path here); the custom-op library is named from there")
    _add_json(p)
    p.set_defaults(func=cmd_triton)

    p = command("serve", help="serve an artifact from a Triton Inference Server on this machine (PyTriton)",
                description="Start Triton Inference Server (the one nvidia-pytriton ships) with the artifact as its "
                            "model, run through export.load with dynamic batching; print a line when it is ready; "
                            "Ctrl-C stops it. Needs the [serve] extra.",
                epilog=f"example:\n  {prog} serve engines/built/tiny-vit --http-port 8000 --grpc-port 8001",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="artifact directory from build-engine")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                                                          "only; 0.0.0.0 for every interface)")
    p.add_argument("--http-port", type=_integer(1, 65535), default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=_integer(1, 65535), default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=_integer(1, 65535), default=8002, help="Prometheus metrics port (default 8002)")
    _add_serving(p)
    p.set_defaults(func=cmd_serve)

    p = command("bench", help="time the FourierAttention implementations (CPU or GPU)",
                description="Each implementation is first checked against a float64 oracle, then timed: "
                            "median of --repeats runs after --warmup runs, over rotating inputs (CUDA events "
                            "on a GPU); implementations that cannot fit in memory, or whose runtime is "
                            "missing, are reported skipped with the reason. cpu: eager PyTorch float32, our "
                            "ONNX Runtime op, our PyTorch op (the CPU kernel); cuda: eager float32/float16, "
                            "our CUDA kernel in float32/float16, TensorRT engines of the op in float32/float16 "
                            "(needs tensorrt or tensorrt-rtx). PyTorch's softmax scaled_dot_product_attention "
                            "is timed at the same shape as the cost reference. On the CPU the first line names the "
                            "kernel's instruction-set path that ran (cpu_kernel_path); FF_CPU_ISA=avx512, avx2 or "
                            "baseline forces one. With DIR, a built artifact: "
                            "validate it, then time it per --batch (p50/p90/p99 latency and throughput), as "
                            "trtexec --loadEngine and polygraphy run do; with --onnx FILE and no DIR, the file as "
                            "it is in stock ONNX Runtime (the baseline of build-engine --onnx).")
    p.add_argument("artifact", type=Path, nargs="?",
                   help="time this built artifact instead (validated first; p50/p90/p99 latency and throughput per "
                        "--batch)")
    p.add_argument("--batch", type=_integer(1), nargs="+", help="with DIR: batch sizes to time (default 1 and 8, within the "
                                                        "artifact's range)")
    p.add_argument("--seq", type=_integer(1), help="with DIR: sequence length of a language model (default its context)")
    _add_source(p)
    _add_json(p)
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to run the op benchmark (default cpu)")
    p.add_argument("--sizes", type=_shape, nargs="+", metavar="B,H,N,D",
                   help="problem sizes, Nq = Nk = N (default B,H,N,64 for N in 256 1024 4096 16384, with B,H = "
                        "1,4 on the CPU and 4,8 on a GPU)")
    p.add_argument("--causal", action="store_true", help="also time the causal variant")
    p.add_argument("--models", action="store_true",
                   help="model level instead: DeiT-tiny batch 1 and 64, lm-small context 256, lm-medium context 384; "
                        "eager float32 vs our op (cpu: ONNX Runtime and PyTorch, with where the time goes: the "
                        "attention op, matrix products, the rest; cuda: float16 with a CUDA graph, and a float16 "
                        "TensorRT engine)")
    p.add_argument("--repeats", type=_integer(1), help="timed runs per implementation (default 5; with --models 3; with DIR 50)")
    p.add_argument("--warmup", type=_integer(0), help="untimed runs first (default 1; with DIR 5)")
    p.add_argument("--out", type=Path, help="also write DIR/bench.json, bench.md and bench.png")
    p.set_defaults(func=cmd_bench)
    return parser


def _configure_logging(verbose: bool, quiet: bool = False) -> None:
    """Progress at INFO on stderr for our loggers (warnings only when quiet); third-party chatter only when verbose."""
    # -v: our debug lines, but only the INFO lines of other libraries (onnxscript's debug output is thousands).
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("export", "fourierformer"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if importlib.util.find_spec("polygraphy") is not None:  # absent where only ONNX Runtime is installed
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(\.|$)")


def _stop(signum: int, frame) -> None:
    """SIGINT/SIGTERM: remove what was being written, say so, exit 128 + the signal's number. Exits at once:
    raising inside torch's export or a native call leaves tracebacks and half-built state behind. During the
    swap of an old artifact for a new one the signal waits until the swap is done."""
    from export.artifact import hold_signal, remove_in_progress

    if hold_signal(signum):
        return
    remove_in_progress()
    for stop in AT_STOP:
        stop()
    if os.getpgrp() == os.getpid():  # our own process group (a shell job): stop what we started (a compiler)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
    os.write(sys.stderr.fileno(), b"interrupted\n" if signum == signal.SIGINT else b"terminated\n")
    os._exit(128 + signum)


AT_STOP: list[Callable[[], object]] = []
"""What a command asked to run when a signal stops the process (a server to shut down)."""


def _install_stop() -> dict[int, object]:
    """Install _stop for SIGINT and SIGTERM (main thread only); the handlers it replaced."""
    return {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}


def _in_worker(function: Callable[[], int]) -> int:
    """``function()`` run in a worker thread while the main thread waits for it, so that a signal is handled at
    once even while the worker is inside a long native call (ONNX Runtime, TensorRT, torch), which would hold a
    handler in the main thread back until it returned. Its exception is raised here."""
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["code"] = function()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="fourierformer-deploy", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


@contextlib.contextmanager
def _stopping_cleanly() -> Iterator[Callable[[Callable[[], int]], int]]:
    """For the duration, _stop handles SIGINT and SIGTERM (restored afterwards); yields how to run the command:
    in a worker thread (see _in_worker). Called off the main thread, where no handler can be installed, it
    changes nothing and runs the command in place."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda function: function()
        return
    previous = _install_stop()
    try:
        yield _in_worker
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _fail(args: argparse.Namespace, message: str) -> int:
    """Print one error line (and the traceback with -v); the user-error exit code."""
    if args.verbose:
        log.exception("error")
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    json_mode = getattr(args, "json", False)
    _configure_logging(args.verbose, args.quiet or json_mode)
    args.stdout = sys.stdout
    try:
        with _stopping_cleanly() as run, \
                contextlib.redirect_stdout(sys.stderr) if json_mode else contextlib.nullcontext():
            return run(lambda: args.func(args))
    except UserError as exc:
        return _fail(args, str(exc))
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        return _fail(args, f"{args.command} needs the Python package {exc.name}, which is not installed: "
                           f"pip install 'fourierformer-deploy[{extra}]'")
    except MemoryError:
        return _fail(args, f"{args.command} ran out of memory (a size too large for this machine)")
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a full disk, a read-only folder, a file in the way
        return _fail(args, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    except KeyboardInterrupt:  # only where _stop could not be installed (main() called from a thread)
        print("interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The program (``python -m export``, ``fourierformer-deploy``): main() with _stop installed for the whole
    process, so that a signal after the command still exits 130 or 143; it exits as soon as the command is done."""
    _install_stop()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the work is done and written: skip the second or more of torch's teardown, where a signal
                    # would find Python's default handlers back

