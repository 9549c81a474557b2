"""An artifact is a trust boundary: what its manifest names is checked before anything is loaded, and no native
code it brings is ever loaded. Each attack plants a library whose constructor would write a marker file."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import export
from export.artifact import MANIFEST
from export.cli import EXIT_OK, EXIT_USER_ERROR, main
from export.errors import UserError

PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
  FILE *f = fopen(MARKER, "w");
  if (f) { fputs("the planted library ran\n", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, ort_library) -> Path:
    """A tiny-vit ONNX Runtime artifact with our plugin, built once."""
    out = tmp_path_factory.mktemp("trust") / "tiny-vit"
    assert main(["build-engine", "--model", "tiny-vit", "--out", str(out)]) == EXIT_OK
    return out


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    """A shared library whose constructor writes a marker file, and the marker's path (not yet there)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler (cc) to build the planted library")
    marker, source, library = tmp_path / "marker", tmp_path / "planted.c", tmp_path / "planted.so"
    source.write_text(PLANTED)
    subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o", str(library)], check=True)
    return library, marker


def _copy(built: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the artifact and its manifest as a dict."""
    artifact = tmp_path / "artifact"
    shutil.copytree(built, artifact)
    return artifact, json.loads((artifact / MANIFEST).read_text())


def _save(artifact: Path, manifest: dict) -> None:
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(artifact: Path, capsys, message: str) -> None:
    """``run`` and ``export.load`` both refuse the artifact with ``message``, in one line."""
    assert main(["run", str(artifact)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    with pytest.raises(UserError, match=None) as caught:
        export.load(artifact)
    assert message in str(caught.value)


def test_a_plugin_library_outside_the_artifact_is_never_loaded(built, tmp_path, planted, capsys):
    library, marker = planted
    artifact, manifest = _copy(built, tmp_path)
    outside = tmp_path / "evil.so"
    shutil.copy(library, outside)
    manifest["plugin_library"] = "../evil.so"
    manifest["files"]["../evil.so"] = _sha256(outside)
    _save(artifact, manifest)
    _refused(artifact, capsys, "field plugin_library '../evil.so' is not a relative path inside the artifact")
    assert not marker.exists()


def test_a_planted_library_inside_the_artifact_with_its_hash_is_never_loaded(built, tmp_path, planted, capsys):
    library, marker = planted
    artifact, manifest = _copy(built, tmp_path)
    shutil.copy(library, artifact / manifest["plugin_library"])
    manifest["files"][manifest["plugin_library"]] = _sha256(library)
    _save(artifact, manifest)
    _refused(artifact, capsys, "differs from this installation's")
    assert not marker.exists()


def test_a_tampered_library_is_refused_by_its_hash(built, tmp_path, planted, capsys):
    library, marker = planted
    artifact, manifest = _copy(built, tmp_path)
    shutil.copy(library, artifact / manifest["plugin_library"])
    _refused(artifact, capsys, f"{manifest['plugin_library']} does not match its sha256")
    assert not marker.exists()


@pytest.mark.parametrize("files", [None, {}], ids=["files missing", "files empty"])
def test_a_tampered_model_runs_only_if_listed_with_its_hash(built, tmp_path, capsys, files):
    artifact, manifest = _copy(built, tmp_path)
    (artifact / manifest["onnx_file"]).write_bytes(b"\x08\x07tampered")
    if files is None:
        del manifest["files"]
    else:
        manifest["files"] = files
    _save(artifact, manifest)
    _refused(artifact, capsys, "field onnx_file names 'model.onnx', which is not listed in files")


def test_a_model_outside_the_artifact_is_refused(built, tmp_path, capsys):
    artifact, manifest = _copy(built, tmp_path)
    shutil.copy(artifact / "model.onnx", tmp_path / "outside.onnx")
    manifest["onnx_file"] = "../outside.onnx"
    manifest["files"]["../outside.onnx"] = _sha256(tmp_path / "outside.onnx")
    _save(artifact, manifest)
    _refused(artifact, capsys, "field onnx_file '../outside.onnx' is not a relative path inside the artifact")


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "./model.onnx", "sub/../model.onnx"])
def test_a_files_entry_leading_outside_is_refused_even_with_its_real_hash(built, tmp_path, capsys, name):
    artifact, manifest = _copy(built, tmp_path)
    target = Path("/etc/passwd") if "passwd" in name else artifact / "model.onnx"
    manifest["files"][name] = _sha256(target)
    _save(artifact, manifest)
    _refused(artifact, capsys, f"files entry {name!r} is not a relative path inside the artifact")


def test_a_symlink_in_the_artifact_is_refused(built, tmp_path, capsys):
    artifact, manifest = _copy(built, tmp_path)
    model = artifact / manifest["onnx_file"]
    shutil.move(model, tmp_path / "real.onnx")
    model.symlink_to(tmp_path / "real.onnx")
    _refused(artifact, capsys, "model.onnx is a symbolic link")


def test_a_file_the_manifest_does_not_list_is_refused(built, tmp_path, planted, capsys):
    library, marker = planted
    artifact, _ = _copy(built, tmp_path)
    shutil.copy(library, artifact / "extra.so")
    _refused(artifact, capsys, "holds extra.so, which its manifest does not list")
    assert not marker.exists()


def test_a_listed_file_that_is_missing_is_refused(built, tmp_path, capsys):
    artifact, manifest = _copy(built, tmp_path)
    (artifact / manifest["plugin_library"]).unlink()
    _refused(artifact, capsys, "is missing libfourierformer_ort.so (the plugin library)")


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("backend"), "missing field backend"),
    (lambda m: m.update(backend=3), "field backend must be str, not 3"),
    (lambda m: m.update(backend="tflite"), "field backend is 'tflite'; expected one of onnxruntime, tensorrt"),
    (lambda m: m.update(plugin_library=["x"]), "field plugin_library must be"),
    (lambda m: m.update(inputs="images"), "field inputs must be list[export.artifact.TensorInfo]"),
    (lambda m: m["inputs"][0].pop("dtype"), "missing field inputs[0].dtype"),
    (lambda m: m["inputs"][0].update(dtype="object"), "field inputs[0].dtype is 'object'"),
    (lambda m: m["inputs"][0].update(shape=["batch", 3, None, 32]), "field inputs[0].shape[2] must be int | str"),
    (lambda m: m["inputs"][0].update(shape=["rows", 3, 32, 32]), "has 'rows': neither a size"),
    (lambda m: m["dynamic_ranges"].update(batch=[4, 1]), "field dynamic_ranges.batch must be [min, max]"),
    (lambda m: m.update(files={"model.onnx": 5}), "field files.model.onnx must be str, not 5"),
    (lambda m: m.update(format_version="1"), "field format_version must be int"),
    (lambda m: m.update(surprise=1), "unknown field surprise"),
    (lambda m: m.update(engine_file="model.onnx"), "engine_file and tensorrt must be given exactly for the tensorrt"),
])
def test_a_malformed_manifest_is_one_line_naming_the_field(built, tmp_path, capsys, mutate, message):
    artifact, manifest = _copy(built, tmp_path)
    mutate(manifest)
    _save(artifact, manifest)
    _refused(artifact, capsys, message)


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"{not json", b"\xff\xfe", b"[" * 100000],
                         ids=["empty", "a list", "not json", "not utf-8", "deeply nested"])
def test_a_manifest_that_is_not_a_json_object_is_one_line(built, tmp_path, capsys, content):
    artifact, _ = _copy(built, tmp_path)
    (artifact / MANIFEST).write_bytes(content)
    _refused(artifact, capsys, "is not a valid manifest")
