"""Running artifacts: ONNX Runtime sessions with our custom-op library, input checks, npz I/O, and
:class:`Artifact`, the Python API's handle (``export.load``). Running an ONNX Runtime artifact needs onnxruntime
and numpy only: nothing here imports torch, onnx or Polygraphy (TensorRT artifacts run through Polygraphy)."""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from export.artifact import Manifest, load_manifest, read_verified, sha256_file
from export.errors import UserError, one_line
from export.options import EXAMPLE_SIZE
from fourierformer.configs import config_from_dict, example_arrays

if TYPE_CHECKING:
    import onnxruntime as ort
    from polygraphy.backend.base import BaseRunner

log = logging.getLogger(__name__)


def _onnxruntime():
    """The onnxruntime module; UserError naming the extra to install if it is missing."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError("ONNX Runtime is not installed: pip install 'fourierformer-deploy[onnxruntime]' "
                        "(or [onnxruntime-gpu])") from exc
    return onnxruntime


def ort_session(onnx_path: Path | bytes, library: Path | None, threads: int = 0,
                profile_prefix: Path | None = None) -> ort.InferenceSession:
    """A CPU InferenceSession for ``onnx_path`` (a file or serialized model), with ``library`` registered if given;
    with ``profile_prefix``, ONNX Runtime's profiler writes its trace to a file starting with that path."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    options.log_severity_level = 4  # errors reach the user through the exception, in one line
    if library is not None:
        if not library.is_file():
            raise UserError(f"plugin library not found: {library}")
        try:
            options.register_custom_ops_library(str(library))
        except Exception as exc:  # ORT raises its own RuntimeError subclasses
            raise UserError(f"cannot load plugin library {library}: {exc}") from exc
    if not isinstance(onnx_path, bytes):
        return _session(ort, str(onnx_path), options)
    with tempfile.TemporaryDirectory(prefix="fourierformer-no-external-data-") as empty:
        # ONNX Runtime looks for a serialized model's external data in the working folder unless told where:
        # point it at an empty folder, so that a model cannot read outside files (absolute paths and '..' are
        # refused by ONNX Runtime itself).
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", empty)
        return _session(ort, onnx_path, options)


def _session(ort, model: str | bytes, options) -> ort.InferenceSession:
    """The CPU session; UserError with ONNX Runtime's reason if it refuses the model."""
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load the model: {one_line(exc)}") from exc


def _own_library(directory: Path, manifest: Manifest) -> Path | None:
    """The plugin library to load for an artifact: this installation's own, once the artifact's is found to be
    byte-identical to it. An artifact cannot make the tool load native code it brought."""
    if manifest.plugin_library is None:
        return None
    from export import plugin_library

    ours = plugin_library.ort_library() if manifest.backend == "onnxruntime" else plugin_library.trt_plugin_library()
    if sha256_file(ours) != manifest.files[manifest.plugin_library]:
        raise UserError(f"artifact {directory}: its plugin library {manifest.plugin_library} differs from this "
                        f"installation's ({ours}), and no native code is loaded from an artifact: rebuild the "
                        "artifact with this installation")
    return ours


def _open(directory: Path) -> tuple[Manifest, ort.InferenceSession | BaseRunner]:
    """Verify an artifact; its ONNX Runtime session, or its TensorRT runner (Polygraphy). The model or engine
    is used as the bytes that were hashed, and no file is loaded before every check passed."""
    manifest = load_manifest(directory)
    library = _own_library(directory, manifest)
    if manifest.backend == "onnxruntime":
        session = ort_session(read_verified(directory, manifest, manifest.onnx_file), library)
        _check_session_io(directory, manifest, session)
        return manifest, session
    from export.tensorrt_backend import tensorrt_runner

    return manifest, tensorrt_runner(read_verified(directory, manifest, manifest.engine_file), manifest.tensorrt,
                                     library)


ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
             "int32": "tensor(int32)"}
"""ONNX Runtime's names of the manifest's dtypes."""


def _check_session_io(directory: Path, manifest: Manifest, session: ort.InferenceSession) -> None:
    """UserError unless the model's own inputs and outputs are the manifest's: the same names, dtypes and ranks,
    and a size wherever the model fixes one. A manifest edited to disagree with its model is refused at load."""
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        declared = {t.name: t for t in getattr(manifest, kind)}
        if sorted(declared) != sorted(a.name for a in actual):
            raise UserError(f"artifact {directory}: the manifest's {kind} {sorted(declared)} are not the model's "
                            f"{sorted(a.name for a in actual)}")
        for a in actual:
            info = declared[a.name]
            # where the model fixes an axis the manifest must give that size; a dynamic axis may be named or fixed
            if a.type != ORT_TYPES[info.dtype] or len(a.shape) != len(info.shape) or any(
                    isinstance(theirs, int) and mine != theirs for mine, theirs in zip(info.shape, a.shape)):
                raise UserError(f"artifact {directory}: the manifest says {kind[:-1]} {a.name!r} is {info.dtype} "
                                f"{info.shape}, but the model has {a.type} {a.shape}")


def artifact_feeds(manifest: Manifest, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Model inputs (numpy arrays or CPU tensors) as numpy arrays in the artifact's dtypes (float16 for FP16)."""
    dtypes = {t.name: np.dtype(t.dtype) for t in manifest.inputs}
    arrays = {name: np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
              for name, value in inputs.items()}
    return {name: value.astype(dtypes.get(name, value.dtype)) for name, value in arrays.items()}


MAX_RANDOM_BYTES = 4 << 30
"""The most memory random inputs for a model built from an ONNX file may take (its manifest sets their sizes)."""


def random_feeds(manifest: Manifest, batch: int | None = None, seq: int | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in the artifact's dtypes, reproducible from ``seed``: the named model's example inputs
    (fourierformer.configs.example_arrays), or for a model built from an ONNX file, each dynamic dimension at
    ``batch`` or ``seq`` where it is so named, else EXAMPLE_SIZE; floats standard normal, integers uniform over
    their recorded values (0 where none are recorded). UserError for sizes outside the artifact's ranges."""
    check_sizes(manifest, {"batch": batch, "seq": seq})
    if manifest.config is not None:
        try:
            config = config_from_dict(manifest.config)
            if seq is not None and config.kind != "lm":
                raise UserError("--seq applies to language models only")
            return artifact_feeds(manifest, example_arrays(config, batch or EXAMPLE_SIZE, seq, seed))
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    given = {"batch": batch, "seq": seq}
    for name, size in given.items():
        if size is not None and name not in manifest.dynamic_ranges:
            raise UserError(f"--{name} names no dynamic dimension of this model "
                            f"({', '.join(manifest.dynamic_ranges) or 'it has none'})")
    rng = np.random.default_rng(seed)

    def size(dim: int | str) -> int:
        if isinstance(dim, int):
            return dim
        low, high = manifest.dimension_range(dim)
        return given.get(dim) or min(max(EXAMPLE_SIZE, low), high)
    shapes = {t.name: [size(d) for d in t.shape] for t in manifest.inputs}
    need = sum(math.prod(shapes[t.name]) * np.dtype(t.dtype).itemsize for t in manifest.inputs)
    if need > MAX_RANDOM_BYTES:
        raise UserError(f"random inputs of {need / 2**30:.1f} GiB at these sizes: more than "
                        f"{MAX_RANDOM_BYTES >> 30} GiB (give smaller --batch/--seq, or --input)")
    feeds = {}
    for t in manifest.inputs:
        shape, dtype = shapes[t.name], np.dtype(t.dtype)
        if dtype.kind == "f":
            feeds[t.name] = rng.standard_normal(shape).astype(dtype)
        else:
            low, high = t.values or (0, 0)
            feeds[t.name] = rng.integers(low, high, shape, dtype=dtype, endpoint=True)
    return feeds


def check_feeds(manifest: Manifest, feeds: dict[str, np.ndarray]) -> None:
    """UserError unless ``feeds`` has exactly the manifest's inputs with its dtypes, ranks and dimension ranges."""
    expected = {t.name: t for t in manifest.inputs}
    if set(feeds) != set(expected):
        raise UserError(f"inputs {sorted(feeds)} do not match the model's inputs {sorted(expected)}")
    for name, value in feeds.items():
        info = expected[name]
        if not isinstance(value, np.ndarray):
            raise UserError(f"input {name!r} is a {type(value).__name__}, not a numpy array")
        if value.dtype != np.dtype(info.dtype):
            raise UserError(f"input {name!r} has dtype {value.dtype}, expected {info.dtype}")
        if value.ndim != len(info.shape):
            raise UserError(f"input {name!r} has shape {list(value.shape)}, expected rank {len(info.shape)} {info.shape}")
        for axis, (size, dim) in enumerate(zip(value.shape, info.shape)):
            low, high = manifest.dimension_range(dim)
            if not low <= size <= high:
                raise UserError(f"input {name!r} axis {axis} ({dim}) is {size}, outside {low}..{high}")
        if info.values is not None and value.size:
            low, high = info.values
            smallest, largest = value.min(), value.max()
            if smallest < low or largest > high:
                raise UserError(f"input {name!r} holds values {smallest}..{largest}, outside {low}..{high}"
                                f"{' (the vocabulary)' if name == 'tokens' else ''}")


def check_sizes(manifest: Manifest, sizes: Mapping[str, int | None]) -> None:
    """UserError unless each requested size of a dynamic dimension (``batch``, ``seq``) is in the artifact's range;
    checked before any input is made."""
    for dim, size in sizes.items():
        if size is not None and dim in manifest.dynamic_ranges:
            low, high = manifest.dimension_range(dim)
            if not low <= size <= high:
                raise UserError(f"--{dim} {size} is outside {low}..{high}, the artifact's range")


def max_input_bytes(manifest: Manifest) -> int:
    """The most bytes the artifact's inputs can take together (every dimension at its maximum)."""
    return sum(math.prod(manifest.dimension_range(d)[1] for d in t.shape) * np.dtype(t.dtype).itemsize
               for t in manifest.inputs)


def _check_npz_sizes(archive: zipfile.ZipFile, path: Path, limit: int) -> None:
    """UserError if a member of an .npz would unpack, or declares an array, larger than ``limit`` bytes (read from
    the zip directory and the .npy headers, before any array is loaded), or holds Python objects."""
    for info in archive.infolist():
        if info.file_size > limit + 4096:
            raise UserError(f"{path}: {info.filename} unpacks to {info.file_size / 2**20:.1f} MiB, more than the "
                            f"artifact's inputs can take ({limit / 2**20:.1f} MiB)")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(member)
        if dtype.hasobject:
            raise UserError(f"{path}: {info.filename} holds Python objects, not numbers")
        if math.prod(shape) * dtype.itemsize > limit:  # exact: Python integers do not overflow
            raise UserError(f"{path}: {info.filename} declares a {dtype} array of shape {str(shape)[:60]}, more "
                            f"than the artifact's inputs can take ({limit / 2**20:.1f} MiB)")


def load_npz(path: Path, limit: int) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file by name, none of them larger than ``limit`` bytes (see _check_npz_sizes)."""
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an .npz file (a zip of .npy arrays, as numpy.savez writes)")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_npz_sizes(archive, path, limit)
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: a compression method zipfile lacks
        raise UserError(f"{path} is not a readable .npz file: {one_line(exc)}") from exc


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, numpy dtype, and per axis a fixed size or (dimension name, min, max)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | tuple[str, int, int], ...]


@dataclass
class Artifact:
    """A verified artifact, ready to run (``export.load``): ``run(feeds)`` checks the feeds against the manifest
    (names, dtypes, ranks, dynamic ranges) and returns the outputs by name. ONNX Runtime artifacts run on their
    session directly (thread-safe, no torch); a TensorRT runner stays active between calls until ``close()`` (or
    the end of a ``with`` block), and calls to it take turns (one execution context)."""

    directory: Path
    manifest: Manifest
    backend: ort.InferenceSession | BaseRunner = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(t) for t in self.manifest.inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(t) for t in self.manifest.outputs]

    def _spec(self, info) -> TensorSpec:
        return TensorSpec(info.name, np.dtype(info.dtype),
                          tuple((d, *self.manifest.dimension_range(d)) if d in self.manifest.dynamic_ranges else d
                                for d in info.shape))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for ``feeds`` (numpy arrays by input name)."""
        feeds = dict(feeds)
        check_feeds(self.manifest, feeds)
        names = [t.name for t in self.manifest.outputs]
        try:
            if self._on_onnxruntime:
                return dict(zip(names, self.backend.run(names, feeds)))
            with self._lock:
                if not self.backend.is_active:
                    self.backend.activate()
                outputs = self.backend.infer(feeds)
                return {name: np.array(outputs[name]) for name in names}
        except Exception as exc:  # ONNX Runtime's and Polygraphy's own error types
            backend = "ONNX Runtime" if self._on_onnxruntime else "TensorRT"
            raise UserError(f"{backend} failed to run artifact {self.directory}: {one_line(exc)}") from exc

    @property
    def _on_onnxruntime(self) -> bool:
        return self.manifest.backend == "onnxruntime"

    def polygraphy_runner(self) -> BaseRunner:
        """The artifact as a Polygraphy runner (for Polygraphy's Comparator)."""
        if not self._on_onnxruntime:
            return self.backend
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(self.backend, name="onnxruntime")

    def close(self) -> None:
        with self._lock:
            if not self._on_onnxruntime and self.backend.is_active:
                self.backend.deactivate()

    def __enter__(self) -> "Artifact":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_artifact(directory: Path) -> Artifact:
    """Verify an artifact directory (every file against its sha256) and open it on its manifest's backend."""
    try:
        manifest, backend = _open(Path(directory))
    except OSError as exc:  # a name too long, a folder that cannot be read
        raise UserError(f"cannot read the artifact {directory}: {exc.strerror or exc}") from exc
    return Artifact(Path(directory), manifest, backend)
