"""fourierformer-deploy: export FourierFormer models to ONNX and build verified deployment artifacts.

The command line: ``python -m export --help`` (or ``fourierformer-deploy``). From Python:

    import export
    path = export.build("tiny-vit", out="engines/built/tiny-vit")     # what build-engine does
    artifact = export.load(path)                                        # verified, on its backend
    outputs = artifact.run({"images": images})                          # numpy in, numpy out
    path = export.compile(my_module, {"images": images}, out="engines/built/mine")  # your own nn.Module

Running an ONNX Runtime artifact needs onnxruntime and numpy only: ``export.load`` does not import torch.
"""

from __future__ import annotations

import os
import sys


RUN_WITH_M = sys.argv[:1] == ["-m"]
"""Whether this import is ``python -m export`` starting (Python sets argv[0] to "-m" while it finds the module)."""


def _untrusted_folder_off_path() -> None:
    """``python -m export`` puts the working folder first on sys.path, where a planted ``numpy.py`` (in an
    artifact or download folder) would be imported instead of the real one. Drop it, unless it is the checkout
    that holds this package. Runs before any other import; ``python -P`` and the console script never add it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if RUN_WITH_M and sys.path[:1] == [os.getcwd()] and os.getcwd() != here:
        del sys.path[0]


_untrusted_folder_off_path()

import signal  # noqa: E402  (after the check above)


def _stopped_while_starting(signum: int, frame) -> None:
    """SIGINT/SIGTERM before the program's own handler is in place (while it imports): nothing is written yet."""
    os.write(2, b"interrupted\n" if signum == signal.SIGINT else b"terminated\n")
    os._exit(128 + signum)


if RUN_WITH_M or os.path.basename(sys.argv[0]) == "fourierformer-deploy":  # run as the program
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stopped_while_starting)

from pathlib import Path  # noqa: E402  (after the check above)

from export.tensorrt_backend import configure_polygraphy  # noqa: E402

configure_polygraphy()


def load(directory: str | Path):
    """The artifact in ``directory``, verified and ready to run: an :class:`export.runtime.Artifact` with
    ``.run(feeds) -> dict``, ``.inputs``, ``.outputs`` and ``.manifest``; UserError if it is broken."""
    from export.runtime import load_artifact

    return load_artifact(Path(directory))


def build(model: str | None = None, *, checkpoint: str | Path | None = None, out: str | Path | None = None,
          backend: str = "auto", precision: str = "fp32", attention: str = "auto",
          shapes: dict[str, tuple[int, int, int]] | None = None, compute_capabilities: tuple[int, ...] = (),
          ema: bool = False, seed: int = 0) -> Path:
    """Build an artifact as ``build-engine`` does (same options, same defaults); returns its directory."""
    from export.builder import build_engine
    from export.errors import UserError
    from export.options import MAX_SEED, BuildOptions

    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")

    options = BuildOptions(model, Path(out) if out is not None else None, backend, precision, attention,
                           Path(checkpoint) if checkpoint is not None else None, seed, shapes=shapes,
                           compute_capabilities=tuple(compute_capabilities), ema=ema)
    return build_engine(options)[0]


def compile(module, example_inputs: dict, *, out: str | Path | None = None, backend: str = "auto",
            precision: str = "fp32", attention: str = "auto", dynamic_shapes: dict | None = None,
            shapes: dict[str, tuple[int, int, int]] | None = None, compute_capabilities: tuple[int, ...] = (),
            source: str | Path | None = None) -> Path:
    """Build an artifact from your own ``torch.nn.Module`` (export/module_compiler.py); returns its directory.

    The module is exported with the dynamo exporter on ``example_inputs`` (keyword arguments of its forward, by
    name; ``dynamic_shapes`` as torch.export takes them), then built as ``build-engine --onnx`` builds a file:
    Fourier attention written in plain PyTorch is fused into FourierAttention nodes, and layers built from
    ``fourierformer.FourierAttention`` export to one node directly. The plain export is kept at ``source`` if
    given. The artifact is checked against the module itself on ``example_inputs`` (UserError if they differ
    beyond the precision's normwise bound).
    """
    from export.module_compiler import compile_module
    from export.options import BuildOptions

    options = BuildOptions(None, Path(out) if out is not None else None, backend, precision, attention,
                           shapes=shapes, compute_capabilities=tuple(compute_capabilities))
    return compile_module(module, example_inputs, options, dynamic_shapes, Path(source) if source else None)
