"""An artifact is a trust boundary: what its manifest names is checked before anything is loaded, and no native
code it brings is ever loaded. Each attack plants a library whose constructor would write a marker file."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
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
    (lambda m: m["dynamic_ranges"].update(batch=[1, 10**12]), "with 1 <= min <= max <= 4096"),
    (lambda m: m.update(files={"model.onnx": 5}), "field files.model.onnx must be str, not 5"),
    (lambda m: m.update(format_version="1"), "field format_version must be int"),
    (lambda m: m.update(surprise=1), "unknown field surprise"),
    (lambda m: m.update(engine_file="model.onnx"), "engine_file and tensorrt must be given exactly for the tensorrt"),
    (lambda m: m.update(weights={"seed": 2**80}), "field weights must be {\"seed\": 0..4294967295}"),
    (lambda m: m.update(weights={"checkpoint": "/x.pt", "sha256": "0", "format": "x", "ema": False}),
     "a checkpoint record"),
    (lambda m: m.update(weights={"onnx": "/x.onnx", "sha256": "0" * 64}),
     "fields config, weights and fused_layers disagree"),
    (lambda m: m.update(config=None, weights={"onnx": "/x.onnx", "sha256": "0" * 64}),
     "fields config, weights and fused_layers disagree"),
    (lambda m: m.update(config=None, weights={"onnx": "/x.onnx", "sha256": "0" * 64}, fused_layers=-1),
     "field fused_layers must be >= 0"),
    (lambda m: m.update(fused_layers=2), "fields config, weights and fused_layers disagree"),
    (lambda m: m.update(outputs=[]), "field outputs must list at least one tensor, each name once"),
    (lambda m: m.update(inputs=m["inputs"] * 2), "field inputs must list at least one tensor, each name once"),
    (lambda m: m["config"].update(embed_dim=3 << 20), "field config: field embed_dim is 3145728, not an integer in "
                                                      "1..1048576"),
    (lambda m: m["config"].update(depth=2000), "field depth is 2000, not an integer in 1..1024"),
    (lambda m: m["config"].update(img_size=4096), "field inputs {'images': ['batch', 3, 32, 32]} is not what field "
                                                  "config's model has, {'images': ['batch', 3, 4096, 4096]}"),
    (lambda m: (m["config"].update(num_classes=11), m["outputs"][0].update(shape=["batch", 11])),
     "the manifest says output 'logits' is float32 ['batch', 11], but the model has tensor(float) ['batch', 10]"),
    (lambda m: m["outputs"][0].update(dtype="float16"), "the manifest says output 'logits' is float16"),
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


def test_validate_refuses_a_config_larger_than_the_model_it_ships(built, tmp_path, capsys):
    """A config the model file is far too small for is refused before the eager model is built (a manifest
    cannot make validate allocate terabytes)."""
    artifact, manifest = _copy(built, tmp_path)
    manifest["config"].update(embed_dim=3 << 18, depth=1024)
    _save(artifact, manifest)
    assert main(["validate", str(artifact)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "its config describes 7,599,835,015,545,866 parameters" in err and "parameters, more than its model.onnx" in err, err
    assert len(err.splitlines()) == 1


def _external_data_model(location: str) -> bytes:
    """An ONNX model whose one initializer is external data at ``location``; its output is those bytes."""
    from onnx import TensorProto, helper

    secret = TensorProto(name="secret", data_type=TensorProto.UINT8, dims=[16], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        secret.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Cast", ["secret"], ["logits"], to=TensorProto.FLOAT)], "leak",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              initializer=[secret])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["secret.bin", "../secret.bin", "/etc/hostname"])
def test_a_model_cannot_read_outside_files_as_external_data(built, tmp_path, capsys, monkeypatch, location):
    """ONNX Runtime would look for a serialized model's external data in the working folder."""
    artifact, manifest = _copy(built, tmp_path)
    (artifact / "model.onnx").write_bytes(_external_data_model(location))
    manifest["files"]["model.onnx"] = _sha256(artifact / "model.onnx")
    _save(artifact, manifest)
    for folder in (tmp_path, artifact):
        (folder / "secret.bin").write_bytes(b"S" * 16)
    (artifact / "secret.bin").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(artifact)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "ONNX Runtime cannot load the model: " in err and "External data" in err, err
    assert len(err.splitlines()) == 1


def test_python_m_export_does_not_import_modules_planted_in_the_working_folder(built, tmp_path):
    """``python -m`` puts the working folder first on sys.path: an artifact folder with a numpy.py in it."""
    marker = tmp_path / "marker"
    for module in ("numpy", "polygraphy", "ctypes", "onnxruntime"):
        (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('planted')\n")
    result = subprocess.run([sys.executable, "-m", "export", "run", str(built)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == EXIT_OK, result.stderr
    assert not marker.exists(), "a module planted in the working folder was imported"


def test_an_unlisted_empty_folder_is_refused(built, tmp_path, capsys):
    artifact, _ = _copy(built, tmp_path)
    (artifact / "hidden").mkdir()
    _refused(artifact, capsys, "holds hidden, which its manifest does not list (refused)")


def test_a_name_too_long_is_one_line(tmp_path, capsys):
    long_name = tmp_path / ("x" * 300)
    assert main(["run", str(long_name)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    with pytest.raises(UserError):
        export.load(long_name)
