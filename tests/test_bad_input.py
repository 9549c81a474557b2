"""Every bad input is one line on stderr, exit code 2, and nothing half-written (issue #11, section 2)."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from export import builder as build_module
from export.cli import EXIT_OK, EXIT_USER_ERROR, main
from fourierformer.configs import get_config
from fourierformer.models import create_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, ort_library) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    built = {}
    for model in ("tiny-lm", "tiny-vit"):
        assert main(["build-engine", "--model", model, "--out", str(root / model)]) == EXIT_OK
        built[model] = root / model
    return built


def one_line_error(capsys, *args, message: str) -> None:
    """``args`` exit 2 with exactly one stderr line containing ``message`` and no traceback."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.mark.parametrize("args, message", [
    (["validate", "{vit}", "--batch", "-1"], "argument --batch: must be >= 1, got -1"),
    (["run", "{vit}", "--batch", "-2"], "argument --batch: must be >= 1, got -2"),
    (["run", "{vit}", "--batch", "1000000000"], "--batch 1000000000 is outside 1..4096, the artifact's range"),
    (["validate", "{lm}", "--seq", "100000"], "--seq 100000 is outside 1..64, the artifact's range"),
    (["bench", "{vit}", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["bench", "{vit}", "--warmup", "-5"], "argument --warmup: must be >= 0, got -5"),
    (["build-engine", "--model", "tiny-vit", "--seed", str(2**64)], f"argument --seed: {2**64} is outside 0..4294967295"),
    (["run", "{vit}", "--input-seed", "x"], "argument --input-seed: expected an integer, got 'x'"),
    (["validate", "{vit}", "--atol", "nan"], "argument --atol: expected a finite number >= 0, got 'nan'"),
    (["onnx", "--model", "tiny-vit", "--opset", "5", "--out", "{tmp}/m.onnx"], "argument --opset: 5 is outside 17..23"),
])
def test_numbers_out_of_range(artifacts, tmp_path, capsys, args, message):
    start = time.perf_counter()
    one_line_error(capsys, *[a.format(vit=artifacts["tiny-vit"], lm=artifacts["tiny-lm"], tmp=tmp_path) for a in args],
                   message=message)
    assert time.perf_counter() - start < 30  # refused, not attempted (a batch of 1e9 would allocate terabytes)
    assert not (tmp_path / "m.onnx").exists()


def test_an_honoured_opset(tmp_path):
    import onnx

    assert main(["onnx", "--model", "tiny-vit", "--opset", "17", "--out", str(tmp_path / "m.onnx")]) == EXIT_OK
    assert {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}[""] == 17


def _npz_with_header(path: Path, name: str, shape: tuple[int, ...], dtype: str = "<f4") -> None:
    """An .npz whose member declares ``shape`` in its .npy header but holds almost no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", header.getvalue() + b"\0" * 64)


def _npz_flagged(path: Path, offsets: dict[int, bytes]) -> None:
    """A valid one-member .npz with bytes patched at ``offsets`` from both the local and the central header."""
    np.savez(path, images=np.zeros((1, 3, 32, 32), np.float32))
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    for offset, value in offsets.items():  # local header offsets; the central header's lie 2 bytes further
        data[offset:offset + len(value)] = value
        data[central + offset + 2:central + offset + 2 + len(value)] = value
    path.write_bytes(bytes(data))


def _zip_bomb(path: Path, name: str, size: int) -> None:
    """A deflated member of ``size`` zero bytes behind a valid .npy header (a few hundred KiB on disk)."""
    header = io.BytesIO()
    np.lib.format.write_array(header, np.zeros(1, np.float32))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(f"{name}.npy", "w",
                                                                                   force_zip64=True) as member:
        member.write(header.getvalue()[:128])
        chunk = b"\0" * (1 << 24)
        for _ in range(size // len(chunk)):
            member.write(chunk)


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p, np.zeros(3)), "is not an .npz file"),
    (lambda p: p.write_bytes(b"PK\x03\x04 broken"), "is not an .npz file"),
    (lambda p: _npz_with_header(p, "images", (1 << 30, 3)),
     "images.npy declares a float32 array of shape (1073741824, 3), more than"),
    (lambda p: _npz_with_header(p, "images", (10**400, 3)), "images.npy declares a float32 array of shape (1000"),
    (lambda p: _npz_flagged(p, {6: b"\x01"}), "is encrypted, password required"),
    (lambda p: _npz_flagged(p, {8: b"\x63\x00"}), "That compression method is not supported"),
    (lambda p: _zip_bomb(p, "images", 256 << 20), "images.npy unpacks to 256.0 MiB"),
    (lambda p: np.savez(p, images=np.array([object()] * 2, dtype=object)), "holds Python objects"),
    (lambda p: np.savez(p, pixels=np.zeros((1, 3, 32, 32), np.float32)), "do not match the model's inputs ['images']"),
    (lambda p: np.savez(p, images=np.zeros((1, 3, 32, 32), np.float64)), "has dtype float64, expected float32"),
    (lambda p: np.savez(p, images=np.zeros((1, 3, 31, 32), np.float32)), "axis 2 (32) is 31, outside 32..32"),
])
def test_bad_input_files(artifacts, tmp_path, capsys, make, message):
    path = tmp_path / "in.npz"
    make(path)
    path = path if path.exists() else tmp_path / "in.npz.npy"
    start = time.perf_counter()
    one_line_error(capsys, "run", artifacts["tiny-vit"], "--input", path, message=message)
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("token, message", [(-1, "holds values -1..-1, outside 0..511 (the vocabulary)"),
                                            (512, "holds values 512..512, outside 0..511 (the vocabulary)")])
def test_token_ids_outside_the_vocabulary(artifacts, tmp_path, capsys, token, message):
    np.savez(tmp_path / "in.npz", tokens=np.full((1, 4), token, np.int64))
    one_line_error(capsys, "run", artifacts["tiny-lm"], "--input", tmp_path / "in.npz", message=message)
    import export

    with pytest.raises(Exception, match="outside 0..511"):
        export.load(artifacts["tiny-lm"]).run({"tokens": np.full((1, 4), token, np.int64)})


@pytest.mark.parametrize("state, message", [
    (lambda s: {**s, "head.weight": "a string"}, "head.weight"),
    (lambda s: {**s, "head.weight": None}, "head.weight"),
    (lambda s: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in s.items()},
     "non-finite values"),
    (lambda s: {**s, "head.weight": s["head.weight"].to(torch.complex64)}, "is complex (torch.complex64)"),
])
def test_bad_checkpoint_values(tmp_path, capsys, state, message):
    torch.save(state(create_model(get_config("tiny-vit")).state_dict()), tmp_path / "w.pt")
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--checkpoint", tmp_path / "w.pt",
                   "--out", tmp_path / "out", message=message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ('model = 3', "model must be a string, not 3"),
    ('precision = ["fp16"]', "precision must be a string"),
    ('compute_capabilities = "86"', "compute_capabilities must be a list of integers"),
    ('shapes = 5', "shapes must be a table"),
    ('[shapes]\nbatch = [1, 2]', "shapes.batch must be [MIN, OPT, MAX] (three integers)"),
    ('[shapes]\nbatch = ["1", 2, 3]', "shapes.batch must be [MIN, OPT, MAX]"),
    ('colour = "blue"', "unknown key 'colour'"),
    ('model = ', "is not valid TOML"),
    ('model = ' + '[' * 8000 + ']' * 8000, "nested too deeply"),
])
def test_bad_recipes(tmp_path, capsys, text, message):
    (tmp_path / "r.toml").write_text(text + "\n")
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--recipe", tmp_path / "r.toml",
                   "--out", tmp_path / "out", message=message)


def test_an_out_whose_parent_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--out", tmp_path / "file" / "art",
                   message="cannot create the artifact")
    one_line_error(capsys, "onnx", "--model", "tiny-vit", "--out", tmp_path / "file" / "m.onnx",
                   message="cannot create the ONNX model")


def test_run_output_into_a_missing_folder_is_created(artifacts, tmp_path):
    assert main(["run", str(artifacts["tiny-vit"]), "--output", str(tmp_path / "new" / "out")]) == EXIT_OK
    assert sorted(np.load(tmp_path / "new" / "out.npz").files) == ["logits"]


@pytest.mark.parametrize("step", ["onnx", "build-engine"])
def test_a_full_disk_leaves_nothing_behind(tmp_path, capsys, monkeypatch, step):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    monkeypatch.setattr(build_module.onnx, "save", full)
    out = tmp_path / ("m.onnx" if step == "onnx" else "art")
    one_line_error(capsys, step, "--model", "tiny-vit", "--out", out, message="No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_folder_with_user_files_is_not_replaced(artifacts, tmp_path, capsys):
    folder = tmp_path / "art"
    subprocess.run(["cp", "-r", artifacts["tiny-vit"], folder], check=True)
    (folder / "notes.txt").write_text("mine")
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--out", folder,
                   message="refusing to overwrite")
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    assert main(["build-engine", "--model", "tiny-vit", "--out", str(folder)]) == EXIT_OK  # exactly an artifact


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_export_cleans_up(tmp_path, signum, code):
    process = subprocess.Popen([sys.executable, "-m", "export", "build-engine", "--model", "deit-tiny", "--out",
                                str(tmp_path / "art")], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in process.stderr:
        if line.startswith("[2/5]"):
            time.sleep(2)  # inside torch's export
            break
    process.send_signal(signum)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == code
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] in ("interrupted", "terminated"), rest
    assert list(tmp_path.iterdir()) == [], "a partial artifact was left behind"


STAGED_THEN_SIGNALLED = """
import os, signal, sys
from pathlib import Path
from export.artifact import staging_directory
from export.cli import _stopping_cleanly
with _stopping_cleanly(), staging_directory(Path(sys.argv[1])) as staging:
    (staging / "model.onnx").write_bytes(b"half")
    os.kill(os.getpid(), int(sys.argv[2]))
print("not reached")
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_an_artifact_is_written_removes_it(tmp_path, signum, code):
    result = subprocess.run([sys.executable, "-c", STAGED_THEN_SIGNALLED, str(tmp_path / "art"), str(int(signum))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "not reached" not in result.stdout, result.stderr
    assert list(tmp_path.iterdir()) == [], "the partial artifact was left behind"


SWAP_SIGNALLED = """
import os, sys
from pathlib import Path
import export.artifact as artifact
from export.cli import _stopping_cleanly
if sys.argv[3] == "renames":
    artifact._exchange = lambda new, out: False
replace = artifact._replace_directory
def signalled(new, out):
    os.kill(os.getpid(), int(sys.argv[2]))  # arrives as the swap begins: held until it is done
    return replace(new, out)
artifact._replace_directory = signalled
if sys.argv[3] == "build-engine":  # the whole command, in its worker thread
    from export.cli import main
    main(["build-engine", "--model", "tiny-vit", "--out", sys.argv[1]])
else:
    with _stopping_cleanly(), artifact.staging_directory(Path(sys.argv[1])) as staging:
        (staging / "model.onnx").write_text("new")
print("not reached")
"""


@pytest.mark.parametrize("swap", ["exchange", "renames", "build-engine"])
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_swap_leaves_the_new_artifact_whole(tmp_path, signum, code, swap):
    (tmp_path / "art").mkdir()  # the old artifact: an empty folder may be replaced
    result = subprocess.run([sys.executable, "-c", SWAP_SIGNALLED, str(tmp_path / "art"), str(int(signum)), swap],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "not reached" not in result.stdout, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["art"], "the old artifact or the staging folder was left"
    if swap == "build-engine":
        assert main(["validate", str(tmp_path / "art")]) == EXIT_OK
    else:
        assert (tmp_path / "art" / "model.onnx").read_text() == "new"


def test_a_signal_inside_a_long_native_call_stops_at_once(tmp_path):
    """ONNX Runtime runs the op for seconds here (N=8192); SIGTERM must not wait for it to return."""
    process = subprocess.Popen([sys.executable, "-m", "export", "bench", "--sizes", "2,8,8192,64", "--repeats", "3",
                                "--warmup", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    for line in process.stderr:
        if "eager-fp32" in line:  # skipped (too large); ONNX Runtime's run comes next
            time.sleep(3)
            break
    start = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert time.perf_counter() - start < 2, "the signal waited for the native call"


def test_the_program_keeps_its_handler_while_exit_handlers_run():
    """A Ctrl-C after the command, while torch's exit handlers run, exits 130 like any other (not 0)."""
    script = ("import atexit, signal, sys; from export import cli; sys.argv = ['x', '--version']; "
              "atexit.register(lambda: print(signal.getsignal(signal.SIGINT) is cli._stop)); cli.console()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "True", result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_an_output_that_is_not_a_regular_file_is_left_alone(artifacts, tmp_path, capsys, kind):
    target = tmp_path / "out.npz"
    if kind == "symlink":
        (tmp_path / "elsewhere.npz").write_text("mine")
        target.symlink_to(tmp_path / "elsewhere.npz")
    else:
        os.mkfifo(target)
    one_line_error(capsys, "run", artifacts["tiny-vit"], "--output", target,
                   message="it exists and is not a regular file")
    assert target.is_symlink() if kind == "symlink" else stat.S_ISFIFO(target.lstat().st_mode)


def test_the_working_folder_is_never_the_artifact(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--out", ".", message="it holds the working folder")
    assert (tmp_path / "mine.txt").exists()


def test_a_folder_that_cannot_be_written_is_refused_before_the_build(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # root ignores permission bits
    start = time.perf_counter()
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--out", tmp_path / "art",
                   message=f"{tmp_path} is not writable")
    one_line_error(capsys, "onnx", "--model", "tiny-vit", "--out", tmp_path / "m.onnx",
                   message=f"{tmp_path} is not writable")
    assert time.perf_counter() - start < 5  # before the export


def test_a_checkpoint_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.pt")  # opening it would block forever
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--checkpoint", tmp_path / "fifo.pt",
                   "--out", tmp_path / "out", message="is not a regular file")


def test_a_recipe_too_large_is_refused_before_parsing(tmp_path, capsys):
    (tmp_path / "r.toml").write_text("shapes." + ".".join(["a"] * 100_000) + " = 1\n")  # tomllib: > 24 GB
    one_line_error(capsys, "build-engine", "--model", "tiny-vit", "--recipe", tmp_path / "r.toml",
                   "--out", tmp_path / "out", message="larger than 16 KiB")


def test_an_output_that_is_a_folder_or_device_is_left_alone(artifacts, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    for target in (tmp_path / "folder", Path("/dev/null")):
        one_line_error(capsys, "run", artifacts["tiny-vit"], "--output", target,
                       message="it exists and is not a regular file")
    assert not (tmp_path / "folder.npz").exists() and not Path("/dev/null.npz").exists()


def test_the_python_api_checks_the_seed(tmp_path):
    import export
    from export.errors import UserError

    for seed in (-1, 2**80):
        with pytest.raises(UserError, match="seed must be an integer in 0..4294967295"):
            export.build("tiny-vit", out=tmp_path / "a", seed=seed)


def test_a_name_near_the_length_limit_is_written(artifacts, tmp_path):
    """The temporary sibling of a 250-byte name must not pass the 255-byte limit."""
    long = "f" * 246 + ".npz"
    assert main(["run", str(artifacts["tiny-vit"]), "--output", str(tmp_path / long)]) == EXIT_OK
    assert [p.name for p in tmp_path.iterdir()] == [long]


def test_a_bench_report_under_a_file_is_refused_before_timing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    start = time.perf_counter()
    one_line_error(capsys, "bench", "--sizes", "1,1,64,8", "--out", tmp_path / "file" / "report",
                   message="is a file, not a folder")
    assert time.perf_counter() - start < 10
