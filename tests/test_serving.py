"""Serving (issue #12) against a real Triton Inference Server: ``triton`` writes repositories whose config.pbtxt
parses with Triton's own schema, and ``serve`` (PyTriton) answers HTTP and gRPC like ``run``, under load, on bad
requests, and after its server is killed. The serving environment (numpy < 2) is built once, like a user's."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pytest

from export.cli import EXIT_OK, EXIT_USER_ERROR, main
from export.serving.server import free_ports

ROOT = Path(__file__).resolve().parents[1]
CLIENT = Path(__file__).with_name("triton_client.py")
READY_TIMEOUT_S = 120


def _readme_serving() -> list[str]:
    """The README's Serving section, as lines."""
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Serving"):].split("\n## ")[0].splitlines()


@pytest.fixture(scope="session")
def serve_python(tmp_path_factory) -> Path:
    """The python of a fresh environment with the tool and its [onnxruntime,serve] extras, installed with the
    README's command."""
    venv = tmp_path_factory.mktemp("serve") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    line = next(line for line in _readme_serving() if "pip install" in line)
    arguments = shlex.split(line.split("pip install", 1)[1])
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *arguments], capture_output=True,
                             text=True, timeout=1800, cwd=ROOT)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, ort_library) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    for model in ("tiny-vit", "tiny-lm"):
        assert main(["build-engine", "--model", model, "--out", str(root / model)]) == EXIT_OK
    return {model: root / model for model in ("tiny-vit", "tiny-lm")}


def _client(python: Path, mode: str, **args) -> dict:
    result = subprocess.run([str(python), str(CLIENT), mode, json.dumps(args)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@contextmanager
def served(python: Path, artifact: Path, *flags: str) -> Iterator[dict]:
    """``serve`` running on free loopback ports until the block ends (then stopped with SIGINT, and killed if it
    does not stop); yields its ports, process and readiness line."""
    http, grpc, metrics = free_ports(3)
    process = subprocess.Popen([str(python), "-m", "export", "serve", str(artifact), "--http-port", str(http),
                                "--grpc-port", str(grpc), "--metrics-port", str(metrics), *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline, line = time.monotonic() + READY_TIMEOUT_S, ""
        os.set_blocking(process.stdout.fileno(), False)
        while not line.startswith("serving") and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline() or line
            time.sleep(0.1)
        assert line.startswith("serving"), f"not ready in {READY_TIMEOUT_S} s: {process.stderr.read() if process.poll() is not None else ''}"
        yield {"urls": {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "metrics": f"127.0.0.1:{metrics}"}, "process": process, "line": line}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _inputs(artifact: Path, batch: int, tmp_path: Path) -> tuple[Path, Path]:
    """Random inputs of ``batch`` rows and ``run``'s outputs on them, as .npz files."""
    import export
    from fourierformer.configs import config_from_dict, example_arrays

    loaded = export.load(artifact)
    arrays = example_arrays(config_from_dict(loaded.manifest.config), batch=batch, seq=16, seed=3)
    np.savez(tmp_path / "in.npz", **arrays)
    assert main(["run", str(artifact), "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "run.npz")]) == EXIT_OK
    return tmp_path / "in.npz", tmp_path / "run.npz"


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-lm"])
def test_serve_answers_http_and_grpc_like_run(serve_python, artifacts, tmp_path, model):
    artifact = artifacts[model]
    inputs, expected = _inputs(artifact, 3, tmp_path)
    outputs = ["logits"] if model == "tiny-vit" else ["log_probs"]
    with served(serve_python, artifact) as server:
        assert f"serving {model} at http://{server['urls']['http']}" in server["line"]
        found = _client(serve_python, "metadata", model=model, **server["urls"])
        meta = found["metadata"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == (
            [("images", "FP32", [-1, 3, 32, 32])] if model == "tiny-vit" else [("tokens", "INT64", [-1, -1])])
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [(outputs[0], "FP32")]
        assert found["config"]["max_batch_size"] == 64
        # batched only where Triton checks every input itself (see test_a_bad_request_fails_only_itself)
        assert ("dynamic_batching" in found["config"]) == (model == "tiny-vit")
        _client(serve_python, "infer", model=model, input=str(inputs), out=str(tmp_path / "served"), outputs=outputs,
                **server["urls"])
    reference = np.load(expected)
    for kind in ("http", "grpc"):
        got = np.load(tmp_path / f"served-{kind}.npz")
        for name in outputs:
            assert got[name].shape == reference[name].shape
            assert np.abs(got[name] - reference[name]).max() <= 1e-6, kind


def test_serve_under_load_batches_and_loses_nothing(serve_python, artifacts, tmp_path):
    inputs, expected = _inputs(artifacts["tiny-vit"], 16, tmp_path)
    with served(serve_python, artifacts["tiny-vit"]) as server:
        counts = _client(serve_python, "load", model="tiny-vit", input=str(inputs), expected=str(expected),
                         clients=16, requests=50, **server["urls"])
    assert counts["correct"] == 16 * 50 and counts["wrong"] == counts["failed"] == 0, counts
    assert "statistics_error" not in counts, counts["statistics_error"]
    assert counts["execution_count"] < counts["inference_count"] / 1.5, f"requests were not batched: {counts}"


def test_bad_requests_get_errors_and_the_server_keeps_serving(serve_python, artifacts, tmp_path):
    inputs, _ = _inputs(artifacts["tiny-lm"], 2, tmp_path)
    requests = [
        {"model": "no-such-model", "inputs": {"tokens": ["int64", [1, 4], 0]}},
        {"inputs": {"words": ["int64", [1, 4], 0]}},
        {"inputs": {"tokens": ["float32", [1, 4], 0]}},
        {"inputs": {"tokens": ["int64", [1, 4, 2], 0]}},
        {"inputs": {"tokens": ["int64", [65, 4], 0]}},
        {"inputs": {"tokens": ["int64", [1, 4], 512]}},
        {"inputs": {"tokens": ["int64", [1, 4], -1]}},
        {"inputs": {"tokens": ["int64", [1, 65], 0]}},
    ]
    with served(serve_python, artifacts["tiny-lm"]) as server:
        found = _client(serve_python, "bad", model="tiny-lm", requests=requests, input=str(inputs), **server["urls"])
    answers = found["answers"]
    assert "ACCEPTED" not in answers, answers
    assert "outside 0..511 (the vocabulary)" in answers[5] and "outside 0..511" in answers[6], answers
    assert "outside 1..64" in answers[7], answers
    assert found["still_serving"]


def test_a_killed_server_gives_errors_not_hangs_and_a_restart_serves(serve_python, artifacts, tmp_path):
    inputs, expected = _inputs(artifacts["tiny-vit"], 8, tmp_path)
    ready = tmp_path / "serving"
    with served(serve_python, artifacts["tiny-vit"]) as server:
        load = subprocess.Popen([str(serve_python), str(CLIENT), "load", json.dumps(
            {"model": "tiny-vit", "input": str(inputs), "expected": str(expected), "clients": 4,
             "requests": 1_000_000, "until_failure": True, "ready": str(ready), **server["urls"]})],
            stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not ready.exists():  # killed only once the load is being served, so requests are in flight
            assert load.poll() is None and time.monotonic() < deadline, "the load never got an answer"
            time.sleep(0.1)
        tritonserver = subprocess.run(["pgrep", "-P", str(server["process"].pid), "tritonserver"],
                                      capture_output=True, text=True).stdout.split()
        assert tritonserver, "no tritonserver child"
        stubs = subprocess.run(["pgrep", "-P", tritonserver[0]], capture_output=True, text=True).stdout.split()
        os.kill(int(tritonserver[0]), signal.SIGKILL)
        counts = json.loads(load.communicate(timeout=300)[0])
        assert counts["failed"] > 0 and counts["wrong"] == 0, counts
        assert server["process"].wait(timeout=60) == EXIT_USER_ERROR
        err = server["process"].stderr.read().strip().splitlines()
        assert err[-1].startswith("error: Triton Inference Server stopped unexpectedly"), err[-3:]
        for stub in stubs:  # a killed tritonserver leaves its Python backend stubs behind
            subprocess.run(["kill", "-9", stub], capture_output=True)
    with served(serve_python, artifacts["tiny-vit"]) as server:
        _client(serve_python, "infer", model="tiny-vit", input=str(inputs), out=str(tmp_path / "again"),
                outputs=["logits"], **server["urls"])


def test_triton_repositories_parse_with_tritons_schema(serve_python, artifacts, tmp_path):
    repository = tmp_path / "models"
    for model, artifact in artifacts.items():
        assert main(["triton", str(artifact), "--out", str(repository), "--max-batch", "8", "--instances", "2"]) == EXIT_OK
    parsed = _client(serve_python, "config", paths=[str(repository / m / "config.pbtxt") for m in artifacts])
    vit, lm = (parsed[str(repository / m / "config.pbtxt")] for m in ("tiny-vit", "tiny-lm"))
    assert vit["platform"] == "onnxruntime_onnx" and vit["maxBatchSize"] == 8
    assert vit["input"] == [{"name": "images", "dataType": "TYPE_FP32", "dims": ["3", "32", "32"]}]
    assert lm["input"] == [{"name": "tokens", "dataType": "TYPE_INT64", "dims": ["-1"]}]
    assert lm["output"] == [{"name": "log_probs", "dataType": "TYPE_FP32", "dims": ["-1", "512"]}]
    assert vit["instanceGroup"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert vit["dynamicBatching"]["preferredBatchSize"] == [8]
    assert vit["modelOperations"]["opLibraryFilename"] == [str(repository.absolute() / "tiny-vit" / "libfourierformer_ort.so")]
    sums = (repository / "tiny-vit" / "SHA256SUMS").read_text()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=repository / "tiny-vit").returncode == 0, sums


def test_a_tensorrt_repository_config_parses_and_its_readme_says_how_to_load_the_plugin(serve_python, artifacts,
                                                                                        tmp_path):
    """No TensorRT here to build a plan: the repository form is checked on the artifact's manifest made a
    TensorRT one (config.pbtxt and README)."""
    from dataclasses import replace

    from export.artifact import TensorRTInfo, load_manifest
    from export.serving.repository import config_text, readme_text, serving_shape

    manifest = replace(load_manifest(artifacts["tiny-vit"]), backend="tensorrt", engine_file="model.plan",
                       plugin_library="libfourierformer_trt.so",
                       tensorrt=TensorRTInfo("tensorrt", "10.13.0", [90], {"batch": [1, 4, 16]}),
                       dynamic_ranges={"batch": [1, 16]})
    shape = serving_shape(manifest, None, None)
    assert (shape.max_batch, shape.preferred) == (16, (4, 16))
    (tmp_path / "config.pbtxt").write_text(config_text(manifest, shape, 1, "/models/tiny-vit/libfourierformer_trt.so"))
    parsed = _client(serve_python, "config", paths=[str(tmp_path / "config.pbtxt")])[str(tmp_path / "config.pbtxt")]
    assert parsed["platform"] == "tensorrt_plan" and parsed["instanceGroup"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert "modelOperations" not in parsed
    readme = readme_text(manifest, shape, 1, PurePosixPath("/models/tiny-vit"), tmp_path)
    assert "--backend-config=tensorrt,plugins=/models/tiny-vit/libfourierformer_trt.so" in readme
    assert "LD_PRELOAD=/models/tiny-vit/libfourierformer_trt.so" in readme and "docker run --gpus all" in readme
    assert f"-v {tmp_path}:/models" in readme


def test_the_readme_client_snippet_and_the_serving_benchmark(serve_python, artifacts, tmp_path):
    lines = _readme_serving()
    start = next(i for i, line in enumerate(lines) if "tritonclient.http as httpclient" in line)
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("    "))
    snippet = "\n".join(line[4:] for line in lines[start:end])
    with served(serve_python, artifacts["tiny-vit"]) as server:
        result = subprocess.run([str(serve_python), "-c", snippet.replace("127.0.0.1:8000", server["urls"]["http"])],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "(4, 10)", result.stderr[-2000:]
    bench = subprocess.run([str(serve_python), str(ROOT / "scripts" / "bench_serving.py"), str(artifacts["tiny-vit"]),
                            "--requests", "16", "--clients", "4", "--warmup", "2", "--json"], capture_output=True,
                           text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-2000:]
    report = json.loads(bench.stdout)
    assert report["machine"]["model"] == "tiny-vit" and len(report["results"]) == 3
    assert all(row["samples_per_second"] > 0 and row["p50_ms"] <= row["p99_ms"] for row in report["results"].values())


def test_ctrl_c_stops_the_server_cleanly(serve_python, artifacts):
    with served(serve_python, artifacts["tiny-vit"]) as server:
        process = server["process"]
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        start = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert time.monotonic() - start < 15, "stopping waited out Triton's exit timeout"
        assert process.stderr.read().strip().splitlines()[-1:] == ["interrupted"]
    for child in children:
        assert not Path(f"/proc/{child}").exists(), f"the server's process {child} outlived it"
    port = int(server["urls"]["http"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the port is free again


def test_a_bad_request_fails_only_itself(serve_python, artifacts, tmp_path):
    """A bad token id among other clients' good requests: only the bad requests fail."""
    inputs, _ = _inputs(artifacts["tiny-lm"], 2, tmp_path)
    with served(serve_python, artifacts["tiny-lm"]) as server:
        counts = _client(serve_python, "mixed", model="tiny-lm", input=str(inputs), clients=4, requests=15,
                         bad={"tokens": ["int64", [1, 16], 512]}, **server["urls"])
    assert counts["good_failed"] == 0 and counts["good_ok"] == 3 * 15, counts
    assert counts["bad_refused"] == 15 and counts["bad_accepted"] == 0, counts


def test_ports_in_use_or_equal_are_one_line(serve_python, artifacts):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        http, grpc, metrics = free_ports(3)
        for flags, message in (
                (["--http-port", str(port), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                 f"error: --http-port {port}: cannot listen on 127.0.0.1:{port}"),
                (["--http-port", str(http), "--grpc-port", str(http), "--metrics-port", str(metrics)],
                 "error: --http-port, --grpc-port and --metrics-port must differ")):
            start = time.monotonic()
            result = subprocess.run([str(serve_python), "-m", "export", "serve", str(artifacts["tiny-vit"]), *flags],
                                    capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert result.returncode == EXIT_USER_ERROR and time.monotonic() - start < 30, result.stderr[-2000:]
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(message), lines
