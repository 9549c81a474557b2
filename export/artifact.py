"""Artifact directories: files plus a self-describing ``manifest.json``, written atomically and verified on load."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from export.errors import UserError
from export.options import ATTENTIONS, BACKENDS, MAX_BATCH, MAX_SEED, PRECISIONS
from fourierformer.configs import LMConfig, ModelConfig, config_from_dict, io_shapes

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class TensorInfo:
    """A model input or output: name, dtype and shape (strings name dynamic dimensions), and for an integer
    input the [low, high] its values must lie in (token ids: the vocabulary)."""

    name: str
    dtype: str
    shape: list[int | str]
    values: list[int] | None = None


@dataclass
class TensorRTInfo:
    """How a TensorRT engine was built: flavour and version, ahead-of-time targets, profiles, plugin headers."""

    flavour: str
    version: str
    compute_capabilities: list[int]
    profiles: dict[str, list[int]]
    plugin_built_for: str | None = None


@dataclass
class Manifest:
    """What an artifact holds and how it was made; enough to rebuild the eager model (``config`` and ``weights``)
    or to name the ONNX file it was built from (``config`` None, ``weights`` the file's record, ``fused_layers``
    how many attention layers became FourierAttention nodes), and to check every file."""

    model: str
    config: dict | None
    weights: dict
    backend: str
    precision: str
    attention: str
    onnx_file: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    dynamic_ranges: dict[str, list[int]]
    versions: dict[str, str]
    plugin_library: str | None = None
    engine_file: str | None = None
    tensorrt: TensorRTInfo | None = None
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    fused_layers: int | None = None

    def dimension_range(self, dim: int | str) -> tuple[int, int]:
        """(min, max) of an input axis: a dynamic dimension's recorded range, or a fixed size."""
        low, high = self.dynamic_ranges.get(dim, (dim, dim)) if isinstance(dim, str) else (dim, dim)
        return low, high

    def used_files(self) -> dict[str, str]:
        """The files the artifact's backend loads, by manifest field."""
        used = {"onnx_file": self.onnx_file, "engine_file": self.engine_file, "plugin_library": self.plugin_library}
        return {name: value for name, value in used.items() if value is not None}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_replaceable(out: Path) -> None:
    """UserError unless ``out`` does not exist, is an empty folder, or holds exactly an artifact (a valid manifest
    and the files it lists, nothing else): an unrelated folder, or one with files of the user's, is never
    replaced."""
    if Path.cwd().is_relative_to(out.resolve()):
        raise UserError(f"refusing to overwrite {out}: it holds the working folder (name a new folder)")
    if not out.exists() and not out.is_symlink():
        check_creatable(out, "the artifact")
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"refusing to overwrite {out}: it exists and is not a folder")
    _check_writable(out.parent, out, "the artifact")
    if not any(out.iterdir()):
        return
    try:
        _check_listing(out, read_manifest(out))
    except UserError as exc:
        raise UserError(f"refusing to overwrite {out}: it is not exactly an artifact ({exc})") from None


NAME_KEPT = 64
"""How much of a name its temporary sibling keeps (a name near the 255-byte limit must stay writable)."""
IN_PROGRESS: set[Path] = set()
"""Files and folders being written: a signal handler removes them (see :func:`remove_in_progress`)."""


def remove_in_progress() -> None:
    """Remove every partly written file or folder (the process is being stopped)."""
    for path in list(IN_PROGRESS):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


HELD_SIGNALS: list[int] | None = None
"""While a swap of folders is under way, the SIGINT/SIGTERM that arrived (see :func:`_signals_held`)."""


def hold_signal(signum: int) -> bool:
    """For a signal handler: True if ``signum`` was held for later, because a swap of folders is under way."""
    if HELD_SIGNALS is None:
        return False
    HELD_SIGNALS.append(signum)
    return True


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration (a swap of folders must not be cut in half), then deliver
    them. A signal handler asks :func:`hold_signal`: masking would cover only the calling thread."""
    global HELD_SIGNALS
    HELD_SIGNALS = []
    try:
        yield
    finally:
        held, HELD_SIGNALS = HELD_SIGNALS, None
        for signum in dict.fromkeys(held):
            os.kill(os.getpid(), signum)  # to the process: its main thread handles it


_RENAME_EXCHANGE = 2
"""renameat2(2)'s flag: swap two paths atomically."""


def _exchange(new: Path, out: Path) -> bool:
    """Swap ``new`` and ``out`` in one atomic step, where the system and filesystem can (Linux renameat2);
    False where they cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(new), at_cwd, os.fsencode(out), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(out))


def _replace_directory(new: Path, out: Path) -> Path | None:
    """Put folder ``new`` in the place of ``out``; returns where the old ``out`` now lies, to be removed. Where the
    filesystem can, the two are exchanged atomically, so that ``out`` is at every moment the old artifact or the
    new one, even if the process is killed; elsewhere the old one is renamed aside first."""
    if not out.exists():
        new.rename(out)
        return None
    if _exchange(new, out):
        return new
    old = out.parent / f".{out.name[:NAME_KEPT]}.old-{os.getpid()}"
    out.rename(old)
    new.rename(out)
    return old


def check_creatable(path: Path, what: str) -> None:
    """UserError unless ``path`` can be created as far as can be told before the work (its nearest existing
    ancestor is a writable folder), so that a slow step is not wasted on a file in the way."""
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"cannot create {what} {path}: {ancestor} is a file, not a folder")
    _check_writable(ancestor, path, what)


def _check_writable(folder: Path, path: Path, what: str) -> None:
    """UserError unless this process may create files in ``folder`` (read-only filesystems included)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {what} {path}: {folder} is not writable")


def _creating(out: Path, what: str) -> None:
    """Create ``out``'s parent folder; UserError naming the problem (a file in the way, read-only, full)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {out}: {exc.strerror or exc} ({exc.filename or out.parent})") from exc


@contextlib.contextmanager
def staging_directory(out: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; on success it replaces ``out``, on failure (or a signal) it is
    removed. ``out`` must pass :func:`check_replaceable`, so that no unrelated directory is ever overwritten."""
    check_replaceable(out)
    _creating(out, "the artifact")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:NAME_KEPT]}.partial-", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot create the artifact {out}: {exc.strerror or exc}") from exc
    IN_PROGRESS.add(staging)
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would make the artifact private
        yield staging
        with _signals_held():
            old = _replace_directory(staging, out)
            IN_PROGRESS.discard(staging)
            if old is not None:
                IN_PROGRESS.add(old)  # the replaced artifact: removed even if a signal comes next
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            IN_PROGRESS.discard(old)
    finally:
        if staging in IN_PROGRESS:
            shutil.rmtree(staging, ignore_errors=True)
            IN_PROGRESS.discard(staging)


def check_regular_file(path: Path, what: str) -> None:
    """UserError if ``path`` exists as anything but a regular file (a symlink, a folder, a FIFO, a device):
    only a regular file is ever replaced."""
    if path.is_symlink() or path.exists() and not path.is_file():
        raise UserError(f"refusing to write {what} {path}: it exists and is not a regular file")


def write_atomically(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: ``path`` is whole or untouched, and no
    temporary file is left on failure or a signal. UserError naming the problem."""
    check_regular_file(path, what)
    check_creatable(path, what)
    _creating(path, what)
    temporary = path.with_name(f".{path.name[:NAME_KEPT]}.partial-{os.getpid()}")
    IN_PROGRESS.add(temporary)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
        IN_PROGRESS.discard(temporary)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Hash every file in ``directory`` into ``manifest.files`` and write ``manifest.json``."""
    manifest.files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")


MAX_MANIFEST_BYTES = 1 << 24
MAX_DIM = 1 << 31
"""The largest fixed size of an axis a manifest may give."""
ENUMS = {"backend": BACKENDS, "precision": PRECISIONS, "attention": ATTENTIONS}
DTYPES = ("float32", "float16", "int64", "int32")
"""The tensor dtypes an artifact's inputs and outputs may have."""


def _describe(hint: Any) -> str:
    """A type hint in words, for errors."""
    if dataclasses.is_dataclass(hint):
        return "an object"
    return str(hint) if typing.get_origin(hint) else hint.__name__


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` read from JSON as ``hint`` (nested dataclasses built); ValueError naming ``where`` if it isn't."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, where)
            except ValueError:
                continue
    elif dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, where)
    elif origin is list:
        if isinstance(value, list):
            return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"field {where} must be {_describe(hint)}, not {json.dumps(value)[:60]}")


def _dataclass(cls: type, data: Any, where: str) -> Any:
    """A ``cls`` from a JSON object, every field checked; ValueError naming a missing, unknown or mistyped one."""
    if not isinstance(data, dict):
        raise ValueError(f"{'field ' + where if where else 'the manifest'} must be an object")
    prefix = f"{where}." if where else ""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown field {prefix}{unknown[0]}")
    hints = typing.get_type_hints(cls)
    for name, spec in known.items():
        if name not in data and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing field {prefix}{name}")
    return cls(**{name: _typed(value, hints[name], prefix + name) for name, value in data.items()})


def check_manifest(manifest: Manifest) -> None:
    """UserError unless ``manifest`` is one this tool would load (a build checks its own before writing it)."""
    try:
        _check_values(manifest)
    except ValueError as exc:
        raise UserError(f"the artifact's manifest would not be valid: {exc}") from exc


def _check_values(manifest: Manifest) -> None:
    """ValueError naming the first field whose value is outside what the tool accepts."""
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(f"format version {manifest.format_version}; this tool reads {FORMAT_VERSION}")
    from_onnx = "onnx" in manifest.weights
    if from_onnx != (manifest.config is None) or from_onnx != (manifest.fused_layers is not None):
        raise ValueError("fields config, weights and fused_layers disagree: an artifact built from an ONNX file "
                         "has config null, an ONNX weights record and fused_layers; any other has a config")
    try:
        config = None if from_onnx else config_from_dict(manifest.config)
    except ValueError as exc:
        raise ValueError(f"field config: {exc}") from exc
    if manifest.fused_layers is not None and manifest.fused_layers < 0:
        raise ValueError("field fused_layers must be >= 0")
    for name, allowed in ENUMS.items():
        if getattr(manifest, name) not in allowed:
            raise ValueError(f"field {name} is {getattr(manifest, name)!r}; expected one of {', '.join(allowed)}")
    for dim, bounds in manifest.dynamic_ranges.items():
        if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1] <= MAX_BATCH:
            raise ValueError(f"field dynamic_ranges.{dim} must be [min, max] with 1 <= min <= max <= {MAX_BATCH}")
    _check_weights(manifest.weights)
    for kind in ("inputs", "outputs"):
        names = [tensor.name for tensor in getattr(manifest, kind)]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"field {kind} must list at least one tensor, each name once")
        for i, tensor in enumerate(getattr(manifest, kind)):
            if tensor.dtype not in DTYPES:
                raise ValueError(f"field {kind}[{i}].dtype is {tensor.dtype!r}; expected one of {', '.join(DTYPES)}")
            if tensor.values is not None and (len(tensor.values) != 2 or tensor.values[0] > tensor.values[1]):
                raise ValueError(f"field {kind}[{i}].values must be [low, high] with low <= high")
            if tensor.values is not None and np.dtype(tensor.dtype).kind in "iu":
                info = np.iinfo(np.dtype(tensor.dtype))
                if not info.min <= tensor.values[0] <= tensor.values[1] <= info.max:
                    raise ValueError(f"field {kind}[{i}].values must lie within {tensor.dtype}")
            for dim in tensor.shape:
                named = isinstance(dim, str) and (dim in manifest.dynamic_ranges or kind == "outputs")
                if not named and not (isinstance(dim, int) and 1 <= dim <= MAX_DIM):
                    raise ValueError(f"field {kind}[{i}].shape has {dim!r}: neither a size in 1..{MAX_DIM} nor a "
                                     "dimension named in dynamic_ranges")
    if config is not None:
        _check_against_config(manifest, config)
    on_tensorrt = manifest.backend == "tensorrt"
    if any(on_tensorrt != (value is not None) for value in (manifest.engine_file, manifest.tensorrt)):
        raise ValueError("fields engine_file and tensorrt must be given exactly for the tensorrt backend")


def _check_against_config(manifest: Manifest, config: ModelConfig) -> None:
    """ValueError unless the inputs and outputs are the config's model's, and no range goes past its context."""
    for kind, expected in zip(("inputs", "outputs"), io_shapes(config)):
        declared = {t.name: t.shape for t in getattr(manifest, kind)}
        if declared != expected:
            raise ValueError(f"field {kind} {declared} is not what field config's model has, {expected}")
    if isinstance(config, LMConfig) and manifest.dynamic_ranges.get("seq", [1, 1])[1] > config.tgt_len:
        raise ValueError(f"field dynamic_ranges.seq goes past the model's context (config.tgt_len {config.tgt_len})")


def _check_weights(weights: dict) -> None:
    """ValueError unless ``weights`` records random weights ({"seed": 0..2^32-1}), a checkpoint (its path,
    sha256, format and whether its EMA weights were taken) or an ONNX file (its path and sha256)."""
    seed = weights.get("seed")
    if set(weights) == {"seed"} and type(seed) is int and 0 <= seed <= MAX_SEED:
        return
    for kinds in ({"checkpoint": str, "sha256": str, "format": str, "ema": bool}, {"onnx": str, "sha256": str}):
        if set(weights) == set(kinds) and all(type(weights[k]) is t for k, t in kinds.items()) \
                and re.fullmatch("[0-9a-f]{64}", weights["sha256"]) is not None:
            return
    raise ValueError(f"field weights must be {{\"seed\": 0..{MAX_SEED}}}, a checkpoint record "
                     "{\"checkpoint\", \"sha256\", \"format\", \"ema\"} or an ONNX record {\"onnx\", \"sha256\"}")


def _relative_name(name: str, where: str) -> None:
    """ValueError unless ``name`` is a plain relative path inside the artifact (no '..', absolute or odd parts)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or str(path) != name:
        raise ValueError(f"{where} {name!r} is not a relative path inside the artifact")


def _check_listing(directory: Path, manifest: Manifest) -> None:
    """UserError unless the directory holds exactly the manifest and the files it lists, all regular files
    inside it (no symlinks), and every file the backend uses is listed."""
    try:
        for where, name in manifest.used_files().items():
            _relative_name(name, f"field {where}")
            if name not in manifest.files:
                raise ValueError(f"field {where} names {name!r}, which is not listed in files")
        for name in manifest.files:
            _relative_name(name, "files entry")
    except ValueError as exc:
        raise UserError(f"{directory / MANIFEST}: {exc}") from exc
    root = directory.resolve()
    for name in manifest.files:
        path = directory / name
        if any(p.is_symlink() for p in (path, *path.parents) if p.is_relative_to(directory) and p != directory):
            raise UserError(f"artifact {directory}: {name} is a symbolic link (refused: it could lead outside)")
        if not path.is_file() or not path.resolve().is_relative_to(root):
            raise UserError(f"artifact {directory} is missing {name}" + (
                " (the plugin library)" if name == manifest.plugin_library else ""))
    folders = {parent.as_posix() for name in manifest.files for parent in PurePosixPath(name).parents}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink() and name not in manifest.files:
            raise UserError(f"artifact {directory}: {name} is a symbolic link (refused: it could lead outside)")
        if name != MANIFEST and name not in manifest.files and not (path.is_dir() and name in folders):
            raise UserError(f"artifact {directory} holds {name}, which its manifest does not list (refused)")


def read_manifest(directory: Path) -> Manifest:
    """An artifact's manifest, checked against the schema (types, enums, required fields); no file is read."""
    path = directory / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{directory} is not an artifact directory: no {MANIFEST} (build one with "
                        "`fourierformer-deploy build-engine`)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{path} is not a valid manifest: larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = _dataclass(Manifest, json.loads(path.read_bytes()), "")
        _check_values(manifest)
    except (ValueError, RecursionError) as exc:  # json's errors are ValueErrors
        raise UserError(f"{path} is not a valid manifest: {exc}") from exc
    return manifest


def load_manifest(directory: Path, verify: bool = True) -> Manifest:
    """Read and check an artifact's manifest; by default also its listing (every file the backend uses inside
    the directory and listed, nothing else there, no symlinks) and every file against its sha256."""
    manifest = read_manifest(directory)
    if verify:
        _check_listing(directory, manifest)
        for name, expected in manifest.files.items():
            if sha256_file(directory / name) != expected:
                raise UserError(f"artifact {directory}: {name} does not match its sha256 in {MANIFEST} (modified or corrupt)")
        log.debug("verified %d files of %s", len(manifest.files), directory)
    return manifest


def read_verified(directory: Path, manifest: Manifest, name: str) -> bytes:
    """The bytes of a listed file, read once and checked against its sha256 (what is used is what was hashed)."""
    data = (directory / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.files[name]:
        raise UserError(f"artifact {directory}: {name} does not match its sha256 in {MANIFEST} (modified or corrupt)")
    return data
