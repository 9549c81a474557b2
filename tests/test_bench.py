"""The bench command: implementations are checked before they are timed; reports in JSON, Markdown, PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from export import bench, plugin_library, tensorrt_backend
from export.cli import EXIT_OK, main


def test_bench_reports_every_implementation(ort_library, tmp_path):
    assert main(["bench", "--sizes", "1,2,33,17", "--causal", "--repeats", "2", "--out", str(tmp_path)]) == EXIT_OK
    table = (tmp_path / "bench.md").read_text()
    for impl in bench.IMPLEMENTATIONS["cpu"]:
        assert table.count(f"| {impl.name} |") == 2
    assert "cores" in table.splitlines()[0]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["roofline"]["pair_dims_per_second"] > 0 and len(data["results"]) == 2 * len(bench.IMPLEMENTATIONS["cpu"])
    assert all(r["seconds"] > 0 and r["error_vs_fp64"] <= 1e-4 for r in data["results"])
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_to_time_a_wrong_implementation():
    wrong = bench.Implementation("wrong", lambda shape: lambda feeds: torch.zeros_like(feeds["q"]), lambda s: 0)
    with pytest.raises(RuntimeError, match="wrong is wrong"):
        bench.bench_one(wrong, bench.Shape(1, 1, 16, 4), repeats=1, warmup=0)


def test_bench_skips_what_cannot_fit_in_memory():
    huge = bench.Implementation("huge", lambda shape: pytest.fail("must not run"), lambda s: 1 << 60)
    result = bench.bench_one(huge, bench.Shape(1, 1, 16, 4), repeats=1, warmup=0)
    assert result.seconds is None and "free memory" in result.skipped


def test_tensorrt_rows_name_what_is_missing():
    """Where no TensorRT runtime or no GPU is present, the TensorRT rows are reported skipped, with the reason."""
    trt = [impl for impl in bench.IMPLEMENTATIONS["cuda"] if impl.name.startswith("tensorrt")]
    assert [impl.name for impl in trt] == ["tensorrt-fp32", "tensorrt-fp16"]
    missing = bench.tensorrt_missing()
    if missing is None:
        pytest.skip("this machine can run TensorRT engines: test_tensorrt_engines_are_checked_and_timed runs them")
    assert "TensorRT" in missing or "GPU" in missing
    for impl in trt:
        result = bench.bench_one(impl, bench.Shape(1, 1, 16, 4), repeats=1, warmup=0)
        assert result.seconds is None and result.skipped == missing
    skipped = bench.ModelResult(bench.ModelCase("tiny-vit", 2), "cuda", {"eager fp32": 0.5},
                                skipped={"tensorrt fp16": missing})
    assert f"| tiny-vit | 2 | - | cuda | tensorrt fp16 | skipped: {missing} |" in bench.models_markdown([skipped])


@pytest.mark.skipif(tensorrt_backend.installed_flavour() != "tensorrt_rtx",
                    reason="needs tensorrt_rtx (builds engines without a GPU)")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_op_engine_builds_ahead_of_time(precision, tmp_path):
    """The TensorRT rows' engine source (op model, passes, profile) builds with TensorRT-RTX for an sm_86 GPU."""
    proto, profiles, library = bench.op_engine_source(bench.Shape(1, 2, 70, 24, causal=True), precision)
    assert library is None and {n.domain or "" for n in proto.graph.node} == {""}
    onnx.save(proto, tmp_path / "op.onnx")
    tensorrt_backend.build_engine(tmp_path / "op.onnx", tmp_path / "op.engine", profiles, [86], None, None)
    assert (tmp_path / "op.engine").stat().st_size > 0


@pytest.mark.skipif(bench.tensorrt_missing() is not None, reason=f"{bench.tensorrt_missing()}")
def test_tensorrt_engines_are_checked_and_timed():
    trt = tuple(i for i in bench.IMPLEMENTATIONS["cuda"] if i.name.startswith("tensorrt"))
    results = bench.bench([bench.Shape(1, 2, 70, 24, causal=True)], repeats=2, warmup=1, device="cuda",
                          implementations=trt)
    assert all(r.seconds > 0 and r.error_vs_fp64 is not None for r in results)
    model = bench.bench_model(bench.ModelCase("tiny-vit", 2), repeats=1, warmup=0, device="cuda")
    assert model.seconds["tensorrt fp16"] > 0 and not model.skipped


def test_causal_pair_dims_count_visible_pairs():
    assert bench.Shape(1, 1, 4, 2, causal=True).pair_dims == 10 * 2
    assert bench.Shape(2, 3, 4, 2).pair_dims == 2 * 3 * 16 * 2


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,x", "0,1,1,1"])
def test_bench_rejects_bad_sizes(text, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", text])
    err = capsys.readouterr().err
    assert "B,H,N,D" in err or "sizes must be >= 1" in err


def test_model_level_bench_checks_and_times_every_variant(ort_library):
    result = bench.bench_model(bench.ModelCase("tiny-vit", 2), repeats=1, warmup=0)
    assert set(result.seconds) == {"eager fp32", "onnxruntime (our op)", "torch + our op"}
    assert all(s > 0 for s in result.seconds.values())
    assert set(result.errors) == {"onnxruntime (our op)", "torch + our op"}
    assert all(e <= bench.MAX_NORM_ERROR[torch.float32] for e in result.errors.values())
    assert "| tiny-vit | 2 | - | cpu | torch + our op |" in bench.models_markdown([result])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the CUDA bench would run")
def test_cuda_bench_without_a_gpu_names_what_is_missing(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "bench --device cuda needs an NVIDIA GPU" in capsys.readouterr().err


def test_cpu_roofline_counts_match_the_disassembly():
    """CPU_OPS_PER_PAIR_DIM is what scripts/cpu_op_count.py reads from the built library (within 15%: another
    compiler may schedule a little differently; recount and update plugins/cpu/ROOFLINE.md when it fails)."""
    script = Path(__file__).resolve().parent.parent / "scripts/cpu_op_count.py"
    run = subprocess.run([sys.executable, str(script), "--library", str(plugin_library.cpu_library())],
                         capture_output=True, text=True, check=True, timeout=300)
    counted = json.loads(run.stdout)
    assert set(counted) == set(bench.CPU_OPS_PER_PAIR_DIM)
    for path, (fma, other) in bench.CPU_OPS_PER_PAIR_DIM.items():
        assert counted[path]["fma_per_pair_dim"] == pytest.approx(fma, rel=0.15), path
        assert counted[path]["other_per_pair_dim"] == pytest.approx(other, rel=0.15), path
