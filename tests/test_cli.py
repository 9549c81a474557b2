"""End to end through ``python -m export``: build, validate and run artifacts; clear errors; atomic writes."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export import builder as build_module
from export.artifact import MANIFEST
from export.cli import EXIT_OK, EXIT_USER_ERROR, EXIT_VALIDATION_FAILED, main
from export.tensorrt_backend import installed_flavour
from fourierformer.configs import get_config
from fourierformer.models import create_model


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, ort_library) -> dict[str, Path]:
    """tiny-lm and tiny-vit built once for the module."""
    root = tmp_path_factory.mktemp("artifacts")
    built = {}
    for model in ("tiny-lm", "tiny-vit"):
        assert cli("build-engine", "--model", model, "--out", root / model) == EXIT_OK
        built[model] = root / model
    return built


def _manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


@pytest.mark.parametrize("model", ["tiny-lm", "tiny-vit"])
def test_build_writes_self_describing_artifact(artifacts, model):
    manifest = _manifest(artifacts[model])
    assert manifest["model"] == model and manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    assert set(manifest["files"]) == {"model.onnx", "libfourierformer_ort.so"}
    assert manifest["plugin_library"] == "libfourierformer_ort.so"
    assert manifest["versions"]["onnxruntime-gpu"] and manifest["versions"]["torch"].startswith("2.13")
    assert manifest["inputs"][0]["shape"][0] == "batch" and manifest["weights"] == {"seed": 0}
    assert sorted(p.name for p in artifacts[model].iterdir()) == sorted([*manifest["files"], MANIFEST])


@pytest.mark.parametrize("model", ["tiny-lm", "tiny-vit"])
def test_validate_passes(artifacts, model, capsys):
    assert cli("validate", artifacts[model], "--batch", 3) == EXIT_OK
    out = capsys.readouterr().out
    assert "PASSED" in out and ("log_probs" if model == "tiny-lm" else "logits") in out


def test_validate_lm_with_short_sequence(artifacts):
    assert cli("validate", artifacts["tiny-lm"], "--seq", 1, "--batch", 1) == EXIT_OK


def test_validate_detects_wrong_weights(artifacts, tmp_path, capsys):
    """validate is not vacuous: an artifact whose manifest claims other weights fails."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", artifacts["tiny-vit"], copy], check=True)
    manifest = _manifest(copy)
    manifest["weights"] = {"seed": 1}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert cli("validate", copy) == EXIT_VALIDATION_FAILED
    assert "FAILED" in capsys.readouterr().out


def test_run_with_npz_roundtrip(artifacts, tmp_path):
    tokens = np.random.default_rng(0).integers(0, 512, (2, 10)).astype(np.int64)
    np.savez(tmp_path / "in.npz", tokens=tokens)
    assert cli("run", artifacts["tiny-lm"], "--input", tmp_path / "in.npz", "--output", tmp_path / "out.npz") == EXIT_OK
    with np.load(tmp_path / "out.npz") as out:
        log_probs = out["log_probs"]
    model = create_model(get_config("tiny-lm"))
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(log_probs, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((1, 3, 32, 32), np.float32)}, "do not match the model's inputs"),
    ({"tokens": np.zeros((1, 10), np.int32)}, "dtype int32"),
    ({"tokens": np.zeros((10,), np.int64)}, "rank 2"),
    ({"tokens": np.zeros((1, 65), np.int64)}, "outside 1..64"),
])
def test_run_rejects_bad_inputs(artifacts, tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "in.npz", **arrays)
    assert cli("run", artifacts["tiny-lm"], "--input", tmp_path / "in.npz") == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


def test_build_is_reproducible(artifacts, tmp_path):
    assert cli("build-engine", "--model", "tiny-vit", "--out", tmp_path / "again") == EXIT_OK
    assert _manifest(tmp_path / "again") == _manifest(artifacts["tiny-vit"])


def test_rebuild_replaces_artifact_and_failure_leaves_nothing(tmp_path, monkeypatch, ort_library):
    out = tmp_path / "art"
    assert cli("build-engine", "--model", "tiny-vit", "--seed", 3, "--out", out) == EXIT_OK
    assert cli("build-engine", "--model", "tiny-vit", "--seed", 4, "--out", out) == EXIT_OK
    assert _manifest(out)["weights"] == {"seed": 4}

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the middle of a build")

    monkeypatch.setattr(build_module, "write_manifest", broken)
    with pytest.raises(RuntimeError):
        cli("build-engine", "--model", "tiny-vit", "--out", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert _manifest(out)["weights"] == {"seed": 4}


def test_refuses_to_overwrite_unrelated_directory(tmp_path, capsys, caplog):
    (tmp_path / "precious.txt").write_text("keep me")
    assert cli("build-engine", "--model", "tiny-vit", "--out", tmp_path) == EXIT_USER_ERROR
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert "exporting" not in caplog.text  # refused before the slow steps


def test_checkpoint_roundtrip(tmp_path, capsys, ort_library):
    torch.save(create_model(get_config("tiny-vit"), seed=7).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "art"
    assert cli("build-engine", "--model", "tiny-vit", "--checkpoint", tmp_path / "w.pt", "--out", out) == EXIT_OK
    assert _manifest(out)["weights"]["checkpoint"] == str((tmp_path / "w.pt").resolve())
    assert cli("validate", out, "--checkpoint", tmp_path / "w.pt") == EXIT_OK
    assert cli("validate", out) == EXIT_USER_ERROR  # the manifest's path is not followed
    assert f"built from the checkpoint {tmp_path / 'w.pt'}: name it with --checkpoint" in capsys.readouterr().err
    torch.save(create_model(get_config("tiny-vit"), seed=8).state_dict(), tmp_path / "w.pt")
    assert cli("validate", out, "--checkpoint", tmp_path / "w.pt") == EXIT_USER_ERROR
    assert "is not the one the artifact was built from" in capsys.readouterr().err


@pytest.mark.parametrize("setup, args, message", [
    (None, ["build-engine", "--model", "gpt-9"], "unknown model 'gpt-9'"),
    (None, ["build-engine", "--model", "tiny-vit", "--checkpoint", "{tmp}/none.pt"], "checkpoint not found"),
    ("garbage", ["build-engine", "--model", "tiny-vit", "--checkpoint", "{tmp}/w.pt"], "not a readable PyTorch or safetensors file"),
    ("lm-weights", ["build-engine", "--model", "tiny-vit", "--checkpoint", "{tmp}/w.pt"],
     "does not fit --model tiny-vit (missing: blocks.0.attn.paramR"),
    (None, ["validate", "{tmp}"], "no manifest.json"),
])
def test_user_errors_are_one_clear_line(tmp_path, capsys, setup, args, message):
    if setup == "garbage":
        (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    elif setup == "lm-weights":
        torch.save(create_model(get_config("tiny-lm")).state_dict(), tmp_path / "w.pt")
    assert cli(*[a.format(tmp=tmp_path) for a in args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-10]), "does not match its sha256"),
    (lambda d: (d / "libfourierformer_ort.so").unlink(), "missing libfourierformer_ort.so (the plugin library)"),
])
def test_damaged_artifact_is_refused(artifacts, tmp_path, capsys, damage, message):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", artifacts["tiny-vit"], copy], check=True)
    damage(copy)
    for command in ("run", "validate"):
        assert cli(command, copy) == EXIT_USER_ERROR
        assert message in capsys.readouterr().err


def test_process_exit_code_and_no_traceback():
    result = subprocess.run([sys.executable, "-m", "export", "build-engine", "--model", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown model 'nope'")
    assert "Traceback" not in result.stderr


def test_deit_tiny_end_to_end(tmp_path, ort_library):
    out = tmp_path / "deit"
    assert cli("build-engine", "--model", "deit-tiny", "--out", out) == EXIT_OK
    assert cli("validate", out, "--batch", 2) == EXIT_OK


@pytest.mark.parametrize("model, flags, files", [
    ("tiny-lm", ["--attention", "decomposed"], {"model.onnx"}),
    ("tiny-vit", ["--precision", "fp16"], {"model.onnx", "libfourierformer_ort.so"}),
    ("tiny-lm", ["--precision", "fp16", "--attention", "decomposed"], {"model.onnx"}),
])
def test_onnxruntime_decomposed_and_fp16_artifacts_validate(tmp_path, capsys, ort_library, model, flags, files):
    out = tmp_path / "art"
    assert cli("build-engine", "--model", model, "--backend", "onnxruntime", *flags, "--out", out) == EXIT_OK
    manifest = _manifest(out)
    assert set(manifest["files"]) == files
    assert cli("validate", out, "--batch", 2) == EXIT_OK
    printed = capsys.readouterr().out
    assert "PASSED" in printed
    if "fp16" in flags:
        assert "max-norm-error=0.005" in printed


def test_version_from_the_console_script_and_the_module():
    script = Path(sys.executable).parent / "fourierformer-deploy"
    version = importlib.metadata.version("fourierformer-deploy")
    for command, name in (([str(script)], "fourierformer-deploy"), ([sys.executable, "-m", "export"], "python -m export")):
        result = subprocess.run([*command, "--version"], capture_output=True, text=True)
        assert result.returncode == EXIT_OK and result.stdout.strip() == f"{name} {version}", result


@pytest.mark.parametrize("argv, verbose, quiet", [
    (["models"], False, False), (["-v", "models"], True, False), (["models", "-v"], True, False),
    (["-q", "models"], False, True), (["models", "--quiet"], False, True),
])
def test_verbosity_flags_go_before_or_after_the_command(argv, verbose, quiet):
    from export.cli import make_parser

    args = make_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


@pytest.mark.parametrize("command", ["models", "run", "validate"])
def test_json_output_is_one_document_on_stdout(artifacts, command):
    target = [] if command == "models" else [str(artifacts["tiny-lm"])]
    result = subprocess.run([sys.executable, "-m", "export", command, *target, "--json"], capture_output=True, text=True)
    assert result.returncode == EXIT_OK, result.stderr
    document = json.loads(result.stdout)
    if command == "models":
        assert document["lm-small"]["cutoffs"] == [20000, 40000, 200000]
    elif command == "run":
        assert document["outputs"]["log_probs"]["shape"] == [2, 64, 512]
    else:
        assert document["passed"] is True and set(document["tolerances"]) == {"atol", "rtol", "max_norm_error"}
        assert document["outputs"]["log_probs"]["norm_rel"] <= document["tolerances"]["max_norm_error"]


@pytest.mark.parametrize("flag, value", [("--shapes", "batch=1:2:4"), ("--compute-capability", "86"),
                                         ("--timing-cache", "t.cache")])
def test_tensorrt_only_flags_are_refused_for_onnxruntime(tmp_path, capsys, flag, value):
    out = tmp_path / "art"
    assert cli("build-engine", "--model", "tiny-vit", "--backend", "onnxruntime", flag, value, "--out", out) \
        == EXIT_USER_ERROR
    assert f"{flag} only applies to the tensorrt backend" in capsys.readouterr().err and not out.exists()


def test_python_api_loads_and_runs_an_onnxruntime_artifact_without_torch(artifacts):
    """export.load verifies, opens and runs an ONNX Runtime artifact without importing torch."""
    code = ("import sys, numpy as np, export\n"
            f"artifact = export.load({str(artifacts['tiny-lm'])!r})\n"
            "tokens = np.arange(20, dtype=np.int64).reshape(2, 10)\n"
            "out = artifact.run({'tokens': tokens})['log_probs']\n"
            "print(out.shape, [s.shape for s in artifact.inputs], 'torch' in sys.modules)\n"
            "np.save(sys.argv[1], out)\n")
    out_file = artifacts["tiny-lm"].parent / "api-out.npy"
    result = subprocess.run([sys.executable, "-c", code, str(out_file)], capture_output=True, text=True)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == "(2, 10, 512) [(('batch', 1, 4096), ('seq', 1, 64))] False"
    model = create_model(get_config("tiny-lm"))
    with torch.no_grad():
        expected = model(torch.arange(20).reshape(2, 10)).numpy()
    np.testing.assert_allclose(np.load(out_file), expected, rtol=1e-4, atol=1e-4)


def test_python_api_checks_feeds_and_hashes(artifacts, tmp_path):
    import export
    from export.errors import UserError

    with export.load(artifacts["tiny-vit"]) as artifact:
        with pytest.raises(UserError, match="dtype float64"):
            artifact.run({"images": np.zeros((1, 3, 32, 32))})
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", artifacts["tiny-vit"], copy], check=True)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-10])
    with pytest.raises(UserError, match="does not match its sha256"):
        export.load(copy)


def test_python_api_build_is_build_engine(artifacts, tmp_path):
    import export

    path = export.build("tiny-vit", out=tmp_path / "api")
    assert path == tmp_path / "api" and _manifest(path) == _manifest(artifacts["tiny-vit"])


def test_bench_of_an_artifact_validates_then_reports_percentiles(artifacts, capsys):
    assert cli("bench", artifacts["tiny-lm"], "--batch", 1, 3, "--seq", 16, "--repeats", 4, "--warmup", 1,
               "--json") == EXIT_OK
    timings = json.loads(capsys.readouterr().out)["timings"]
    assert [(t["batch"], t["seq"]) for t in timings] == [(1, 16), (3, 16)]
    for t in timings:
        assert 0 < t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"] and t["samples_per_second"] > 0
        assert t["max_norm_error"] <= 1e-4


def test_bench_refuses_to_time_an_artifact_that_fails_validation(artifacts, tmp_path, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", artifacts["tiny-vit"], copy], check=True)
    manifest = _manifest(copy)
    manifest["weights"] = {"seed": 1}  # the eager model it is checked against now has other weights
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert cli("bench", copy, "--batch", 1) == EXIT_USER_ERROR
    assert "fails validation at batch 1" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["{dir}", "--sizes", "1,1,8,8"], "--sizes applies to the op benchmark"),
    (["{dir}", "--device", "cpu"], "--device applies to the op benchmark"),
    (["--batch", "2"], "--batch applies to timing an artifact"),
])
def test_bench_flags_of_the_other_mode_are_refused(artifacts, capsys, args, message):
    assert cli("bench", *[a.format(dir=artifacts["tiny-vit"]) for a in args]) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--atol", "0", "--rtol", "0", "--max-norm-error", "0"], ["-v"]],
                         ids=["failing", "verbose"])
def test_json_stays_json_when_polygraphy_logs(artifacts, extra):
    """Polygraphy prints to stdout (its mismatch report, -v's trace): under --json that goes to stderr."""
    result = subprocess.run([sys.executable, "-m", "export", "validate", str(artifacts["tiny-vit"]), "--json", *extra],
                            capture_output=True, text=True)
    document = json.loads(result.stdout)
    assert result.returncode == (EXIT_VALIDATION_FAILED if document["passed"] is False else EXIT_OK)
    assert document["passed"] is (extra[0] != "--atol")


def test_verbose_and_quiet_exclude_each_other_anywhere(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("-v", "models", "-q")
    assert exit_info.value.code == EXIT_USER_ERROR and "exclude each other" in capsys.readouterr().err


def test_python_api_refuses_feeds_that_are_not_arrays(artifacts):
    import export
    from export.errors import UserError

    with export.load(artifacts["tiny-vit"]) as artifact, pytest.raises(UserError, match="is a list, not a numpy"):
        artifact.run({"images": [[0.0]]})


def test_run_output_gets_its_npz_suffix_and_bad_places_are_one_line(artifacts, tmp_path, capsys):
    assert cli("run", artifacts["tiny-vit"], "--output", tmp_path / "out", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out)["output_file"] == str(tmp_path / "out.npz")
    assert (tmp_path / "out.npz").is_file()
    (tmp_path / "a-file").write_text("x")
    assert cli("run", artifacts["tiny-vit"], "--output", tmp_path / "a-file" / "out.npz") == EXIT_USER_ERROR
    assert "cannot create the outputs" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--seq", "5"], "--seq applies to language models only"),
    (["--input", "{tmp}/in.npz", "--batch", "3"], "--batch applies to random inputs, not to --input"),
])
def test_run_refuses_flags_that_do_not_apply(artifacts, tmp_path, capsys, args, message):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 3, 32, 32), np.float32))
    assert cli("run", artifacts["tiny-vit"], *[a.format(tmp=tmp_path) for a in args]) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


OUR_PROGRESS = re.compile(r"^(\[\d/5\] |exported ONNX: |building the plugin libraries |built |loaded plugin )"
                          r"|^ *\S.* \(\d+ steps?\)$")
"""build-engine's own stderr lines: its steps, the plugin build, and TensorRT's build phases (our progress monitor)."""


@pytest.mark.parametrize("flags", [(), ("--backend", "tensorrt", "--precision", "fp16", "--compute-capability", "86")],
                         ids=["onnxruntime", "tensorrt"])
def test_a_successful_build_prints_no_third_party_lines(tmp_path, flags, ort_library):
    """In a fresh process (torch, Polygraphy and TensorRT configure their loggers when first imported)."""
    if flags and installed_flavour() is None:
        pytest.skip("needs tensorrt or tensorrt-rtx (to build an engine)")
    result = subprocess.run([sys.executable, "-m", "export", "build-engine", "--model", "tiny-vit", *flags,
                             "--out", str(tmp_path / "artifact")], capture_output=True, text=True, timeout=900)
    assert result.returncode == EXIT_OK, result.stderr
    foreign = [line for line in result.stderr.splitlines() if not OUR_PROGRESS.search(line)]
    assert not foreign, "\n".join(foreign)
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith("built ")]
    assert len(result.stdout.splitlines()) == 1, result.stdout


def test_validate_applies_the_normwise_bound_on_its_own(artifacts, capsys):
    """Every element within atol/rtol, but the normwise error above --max-norm-error: a failure."""
    args = ("validate", artifacts["tiny-vit"], "--atol", 1, "--rtol", 1, "--json")
    assert cli(*args) == EXIT_OK
    capsys.readouterr()
    assert cli(*args, "--max-norm-error", 1e-12) == EXIT_VALIDATION_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["tolerances"] == {"atol": 1.0, "rtol": 1.0, "max_norm_error": 1e-12} and not report["passed"]


def test_validate_honours_the_users_elementwise_tolerances(artifacts, capsys):
    assert cli("validate", artifacts["tiny-vit"]) == EXIT_OK  # the fp32 defaults pass
    assert cli("validate", artifacts["tiny-vit"], "--atol", 1e-12, "--rtol", 1e-12) == EXIT_VALIDATION_FAILED
    assert "FAILED: atol=1e-12 rtol=1e-12 max-norm-error=0.0001" in capsys.readouterr().out
