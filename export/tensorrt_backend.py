"""The TensorRT backend, written once against the API common to TensorRT and TensorRT-RTX.

With ``tensorrt`` installed (data-center GPUs) attention runs in our IPluginV3 plugin; with only
``tensorrt_rtx`` (which holds no custom plugins) it is decomposed into standard ops. Engines are built
through Polygraphy's loaders, strongly typed (FP16 means a float16-typed network: TensorRT 11 and
TensorRT-RTX have no FP16 builder flag). TensorRT-RTX builds ahead of time for named compute
capabilities, on a machine without a GPU; running any engine needs a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from export.artifact import TensorRTInfo
from export.errors import UserError
from export.options import Profiles
from fourierformer import opspec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "tensorrt_rtx")
"""Python modules of the two TensorRT flavours, preferred first."""



def installed_flavour() -> str | None:
    """``tensorrt`` if installed, else ``tensorrt_rtx`` if installed, else None (nothing is imported)."""
    return next((f for f in FLAVOURS if importlib.util.find_spec(f) is not None), None)


def configure_polygraphy() -> None:
    """Point Polygraphy at TensorRT-RTX when it is the only flavour (before polygraphy.backend.trt is imported)."""
    if installed_flavour() == "tensorrt_rtx":
        os.environ.setdefault("POLYGRAPHY_USE_TENSORRT_RTX", "1")
        import polygraphy.config

        polygraphy.config.USE_TENSORRT_RTX = True


@dataclass(frozen=True)
class TensorRT:
    """The imported TensorRT module and what it is."""

    module: ModuleType
    flavour: str
    version: str

    @property
    def holds_plugins(self) -> bool:
        """TensorRT-RTX cannot hold custom plugins."""
        return self.flavour == "tensorrt"


def load_tensorrt() -> TensorRT:
    """Import the installed TensorRT flavour; UserError saying what to install if there is none."""
    flavour = installed_flavour()
    if flavour is None:
        raise UserError("no TensorRT found: install `tensorrt` (with a GPU) or `tensorrt-rtx` (builds on any machine)")
    module = importlib.import_module(flavour)
    return TensorRT(module, flavour, module.__version__)


UNUSABLE_CAPABILITIES = {75: "TensorRT-RTX cannot compile these models' matrix products for Turing (SM75: \"FP32 GEMM "
                              "is not supported\")"}
"""Compute capabilities the installed TensorRT-RTX lists but cannot build these models for (measured, 1.7)."""


def check_compute_capabilities(capabilities: tuple[int, ...]) -> None:
    """UserError unless the installed TensorRT can build ahead of time for every one of ``capabilities`` (checked
    before the slow steps: TensorRT-RTX itself refuses them only after parsing the network)."""
    if not capabilities:
        return
    trt = load_tensorrt()
    if trt.flavour != "tensorrt_rtx":
        raise UserError("--compute-capability needs TensorRT-RTX: full TensorRT builds for the GPU it runs on")
    listed = sorted(int(name[2:]) for name in dir(trt.module.ComputeCapability) if name[2:].isdigit())
    supported = [cc for cc in listed if cc not in UNUSABLE_CAPABILITIES]
    for cc in capabilities:
        if cc in UNUSABLE_CAPABILITIES:
            raise UserError(f"cannot build for compute capability {cc}: {UNUSABLE_CAPABILITIES[cc]}; "
                            f"{trt.flavour} {trt.version} builds for {', '.join(map(str, supported))}")
        if cc not in listed:
            raise UserError(f"{trt.flavour} {trt.version} cannot build for compute capability {cc}; it builds for "
                            f"{', '.join(map(str, supported))}")


def gpu_missing_reason() -> str | None:
    """None if a CUDA driver with at least one GPU is present, else why not (no CUDA call beyond the count)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 cannot be loaded)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device visible to the driver"
    return None


def check_no_plugin_nodes(model: onnx.ModelProto) -> None:
    """UserError if any node would make TensorRT-RTX's parser look for a plugin (it aborts the process)."""
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise UserError(f"TensorRT-RTX cannot hold plugins, but the model has custom nodes {custom}; "
                        "build with --attention decomposed")


def _progress_monitor(trt: ModuleType):
    """An IProgressMonitor that logs each build phase (TensorRT builds can take minutes)."""

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            log.info("%s%s (%d steps)", "  " * self.depth[phase_name], phase_name, num_steps)

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return ProgressMonitor()


def profile_shapes(model: onnx.ModelProto, profiles: Profiles) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """min/opt/max shape of every input, with its named dynamic dims taken from ``profiles``."""
    shapes = {}
    for value in model.graph.input:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        missing = [d for d in dims if isinstance(d, str) and d not in profiles]
        if missing:
            raise UserError(f"input {value.name!r} has dynamic dims {missing} without a profile (use --shapes)")
        shapes[value.name] = tuple([profiles[d][i] if isinstance(d, str) else d for d in dims] for i in range(3))
    return shapes


def build_engine(onnx_path: Path, engine_path: Path, profiles: Profiles, compute_capabilities: list[int],
                 plugin_library: Path | None, timing_cache: Path | None) -> TensorRT:
    """Build a strongly typed engine from ``onnx_path`` into ``engine_path``; returns the TensorRT used.

    TensorRT's log (printed by Polygraphy) is kept out of the output: shown with -v, and its error lines are
    added to the UserError of a failed build. TensorRT-RTX logs errors even on builds that succeed (CUDA driver
    calls on a machine without a GPU). Polygraphy's own errors (a parser failure) become UserErrors.
    """
    from polygraphy.exception import PolygraphyException

    log_text = io.StringIO()
    try:
        with contextlib.redirect_stdout(log_text):
            return _build_engine(onnx_path, engine_path, profiles, compute_capabilities, plugin_library, timing_cache)
    except PolygraphyException as exc:
        raise UserError(f"TensorRT build failed: {exc}{_error_lines(log_text.getvalue())}") from exc
    except UserError as exc:
        raise UserError(f"{exc}{_error_lines(log_text.getvalue())}") from exc
    finally:
        if log_text.getvalue():
            log.debug("TensorRT's log:\n%s", log_text.getvalue().rstrip())


def _error_lines(text: str) -> str:
    """TensorRT's error lines from its log, indented on lines of their own (empty if none)."""
    errors = [line for line in text.splitlines() if line.startswith("[E]")]
    return "".join(f"\n  {line}" for line in errors)


def _build_engine(onnx_path: Path, engine_path: Path, profiles: Profiles, compute_capabilities: list[int],
                  plugin_library: Path | None, timing_cache: Path | None) -> TensorRT:
    """build_engine's work, letting Polygraphy's exceptions through."""
    check_compute_capabilities(tuple(compute_capabilities))
    import onnx
    from polygraphy.backend import trt as ptrt

    trt = load_tensorrt()
    model = onnx.load(str(onnx_path), load_external_data=False)
    if plugin_library is None:
        check_no_plugin_nodes(model)
    elif not trt.holds_plugins:
        raise UserError(f"{trt.flavour} {trt.version} cannot hold custom plugins: build with --attention decomposed")
    else:
        load_plugin_library(trt, plugin_library)
    profile = ptrt.Profile()
    for name, (low, opt, high) in profile_shapes(model, profiles).items():
        profile.add(name, low, opt, high)
    common = {"profiles": [profile], "progress_monitor": _progress_monitor(trt.module),
              "load_timing_cache": str(timing_cache) if timing_cache and timing_cache.is_file() else None}
    if trt.flavour == "tensorrt_rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        if not compute_capabilities and gpu_missing_reason():
            raise UserError(f"name the target GPUs with --compute-capability (e.g. 86,89): {gpu_missing_reason()} "
                            "to build for")
        caps = [divmod(cc, 10) for cc in compute_capabilities] or None
        config = CreateConfigRTX(compute_capabilities=caps, use_gpu=not caps, **common)
    else:
        config = ptrt.CreateConfig(**common)
    if timing_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
    network = ptrt.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    engine = ptrt.EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache) if timing_cache else None)()
    if engine is None:
        raise UserError("TensorRT failed to build the engine")
    engine_path.write_bytes(bytes(engine))
    return trt


def plugin_tensorrt_version(library: Path) -> str:
    """The TensorRT headers version the plugin library was built against (its exported query)."""
    try:
        query = ctypes.CDLL(str(library)).ff_trt_plugin_tensorrt_version
    except (OSError, AttributeError) as exc:
        raise UserError(f"{library} is not a FourierAttention TensorRT plugin library: {exc}") from exc
    query.restype = ctypes.c_char_p
    return query().decode()


def load_plugin_library(trt: TensorRT, library: Path) -> None:
    """Register the plugin's creators with TensorRT, refusing a library built for another major version."""
    built_for = plugin_tensorrt_version(library)
    if built_for.split(".")[0] != trt.version.split(".")[0]:
        raise UserError(f"plugin {library} was built against TensorRT {built_for} headers but TensorRT {trt.version} "
                        "is installed: rebuild it (fourierformer-deploy build-plugins --force) with matching headers")
    if trt.module.get_plugin_registry().load_library(str(library)) is None:
        raise UserError(f"TensorRT could not load the plugin library {library}")
    log.info("loaded plugin %s %s (built for TensorRT %s)", opspec.OP_TYPE, opspec.PLUGIN_VERSION, built_for)


def _device_compute_capability() -> int:
    """Compute capability of GPU 0 as an integer such as 90 (the driver must already be usable)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    major, minor, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    return major.value * 10 + minor.value


def tensorrt_runner(engine: bytes, built_with: TensorRTInfo, plugin_library: Path | None):
    """A Polygraphy TrtRunner for a serialized engine, after checking that this machine can run it."""
    reason = gpu_missing_reason()
    if reason:
        raise UserError(f"running a TensorRT engine needs an NVIDIA GPU: {reason}")
    trt = load_tensorrt()
    if (trt.flavour, trt.version.split(".")[0]) != (built_with.flavour, built_with.version.split(".")[0]):
        raise UserError(f"the engine was built with {built_with.flavour} {built_with.version}, but "
                        f"{trt.flavour} {trt.version} is installed: rebuild it")
    device = _device_compute_capability()
    if built_with.compute_capabilities and device not in built_with.compute_capabilities:
        raise UserError(f"the engine was built for compute capabilities {built_with.compute_capabilities}, "
                        f"this GPU is {device}: rebuild with --compute-capability {device}")
    if plugin_library is not None:
        load_plugin_library(trt, plugin_library)
    from polygraphy.backend.trt import TrtRunner

    return TrtRunner(_deserialize(trt, engine), name=trt.flavour)


def _deserialize(trt: TensorRT, engine: bytes):
    """The engine, deserialized with engine host code refused. Polygraphy's loaders allow it (version-compatible
    engines carry code of their own); ours are never built so, and an artifact brings no code."""
    from polygraphy.backend.trt.util import get_trt_logger

    runtime = trt.module.Runtime(get_trt_logger())
    runtime.engine_host_code_allowed = False
    deserialized = runtime.deserialize_cuda_engine(engine)
    if deserialized is None:
        raise UserError(f"{trt.flavour} cannot deserialize the engine (see the log with -v)")
    return deserialized
