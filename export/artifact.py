"""Artifact directories: files plus a self-describing ``manifest.json``, written atomically and verified on load."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from export.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class TensorInfo:
    """A model input or output: name, dtype and shape (strings name dynamic dimensions)."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class Manifest:
    """What an artifact holds and how it was made; enough to rebuild the eager model and check every file."""

    model: str
    config: dict
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
    tensorrt: dict | None = None
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def dimension_range(self, dim: int | str) -> tuple[int, int]:
        """(min, max) of an input axis: a dynamic dimension's recorded range, or a fixed size."""
        low, high = self.dynamic_ranges.get(dim, (dim, dim)) if isinstance(dim, str) else (dim, dim)
        return low, high

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Inverse of ``asdict``; TypeError on missing or unknown keys."""
        data = dict(data)
        data["inputs"] = [TensorInfo(**t) for t in data["inputs"]]
        data["outputs"] = [TensorInfo(**t) for t in data["outputs"]]
        return cls(**data)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_replaceable(out: Path) -> None:
    """UserError unless ``out`` does not exist, is empty, or is an earlier artifact (holding a manifest)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise UserError(f"refusing to overwrite {out}: it exists and is not an artifact directory")


@contextlib.contextmanager
def staging_directory(out: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; on success it replaces ``out``, on failure it is removed.

    ``out`` must pass :func:`check_replaceable`, so that no unrelated directory is ever overwritten.
    """
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the artifact private
    try:
        yield staging
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Hash every file in ``directory`` into ``manifest.files`` and write ``manifest.json``."""
    manifest.files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")


def load_manifest(directory: Path, verify: bool = True) -> Manifest:
    """Read an artifact's manifest and (by default) check every file against its recorded sha256."""
    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} is not an artifact directory: no {MANIFEST} (build one with `python -m export build-engine`)")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path} is not a valid manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise UserError(f"{path} has format version {manifest.format_version}; this tool reads {FORMAT_VERSION}")
    if verify:
        for name, expected in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise UserError(f"artifact {directory} is missing {name}" + (
                    " (the plugin library)" if name == manifest.plugin_library else ""))
            if sha256_file(file) != expected:
                raise UserError(f"artifact {directory}: {name} does not match its sha256 in {MANIFEST} (modified or corrupt)")
        log.debug("verified %d files of %s", len(manifest.files), directory)
    return manifest
