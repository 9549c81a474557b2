"""The bench command: implementations are checked before they are timed; reports in JSON, Markdown, PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from export import bench, cpu_kernel, plugin_library, tensorrt_backend, time_breakdown
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
    assert set(result.shares) == {"onnxruntime (our op)", "torch + our op"}
    for shares in result.shares.values():
        assert tuple(shares) == time_breakdown.CATEGORIES and sum(shares.values()) == pytest.approx(1)
        assert shares["attention op"] > 0 and shares["matrix products"] > 0
    assert "| tiny-vit | 2 | - | onnxruntime (our op) |" in bench.breakdown_markdown([result])


def test_onnxruntime_breakdown_leaves_out_the_warm_up_run(tmp_path):
    """Node times count only inside the runs kept, by op type: our op, the matrix products, the rest not at all."""
    def node(op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"n_{op}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}
    trace = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}, node("FourierAttention", 10, 50),
             {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40}, node("FourierAttention", 205, 20),
             node("MatMul", 226, 5), node("Gemm", 231, 4), node("Add", 236, 2),
             {"cat": "Node", "name": "n_MatMul_fence_before", "ts": 226, "dur": 3, "args": {"op_name": "MatMul"}}]
    (tmp_path / "trace.json").write_text(json.dumps(trace))
    assert time_breakdown.onnxruntime_node_seconds(tmp_path / "trace.json") == pytest.approx((20e-6, 9e-6, 40e-6))


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


CPU_TIME_SPLIT = Path(__file__).resolve().parent.parent / "scripts/cpu_time_split.py"


def test_cpu_time_split_times_each_phase_of_the_same_computation():
    """scripts/cpu_time_split.py: the native prepare + compute and the pooled op agree bitwise (the script exits
    non-zero otherwise), prepare is a part of the one-thread time, and the table has a row per shape."""
    shapes = ["1,2,128,16,1", "2,1,67,20,0"]
    args = [sys.executable, str(CPU_TIME_SPLIT), "--shapes", *shapes, "--repeats", "5", "--warmup", "1",
            "--threads", "2"]
    run = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["machine"]["cpu_kernel_path"] in cpu_kernel.ISAS
    assert [s["shape"] for s in report["splits"]] == ["1,2,128,16 causal", "2,1,67,20"]
    for s, shape in zip(report["splits"], (bench.Shape(1, 2, 128, 16, True), bench.Shape(2, 1, 67, 20))):
        assert s["pair_dims"] == shape.pair_dims and s["threads"] == 2
        assert 0 < s["prepare_s"] < s["one_thread_s"] and s["pool_1_s"] > 0 and s["pool_n_s"] > 0
    table = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert table[0].startswith("cpu ") and "cpu_kernel_path" in table[0]
    assert table[1].startswith("| B,H,N,D | prepare ms |") and len(table) == 3 + len(shapes)


def test_cpu_time_split_refuses_a_bad_shape_in_one_line():
    """A shape that is not B,H,N,D,causal, or one too large for this machine: exit 2, one line, no traceback."""
    run = subprocess.run([sys.executable, str(CPU_TIME_SPLIT), "--shapes", "1,2,40,16"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert "expected B,H,N,D,causal (five integers), got '1,2,40,16'" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, str(CPU_TIME_SPLIT), "--shapes", "1,1,100000000,64,0"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1].endswith("more than half the free memory")


def test_gpu_summary_reads_what_gpu_checks_writes(tmp_path):
    """scripts/gpu_summary.py: parity per dtype beside its bound, per-shape rates and like-for-like speedups."""
    lm, deit = bench.Shape(1, 8, 256, 16, causal=True), bench.Shape(1, 3, 197, 64)
    results = [bench.Result("eager-fp32", lm, 4e-3, 1e-7),
               bench.Result("cuda-op-fp32", lm, 1e-4, 2e-7, error_bound=1e-5),
               bench.Result("eager-fp16", lm, 2e-3, 1e-2),
               bench.Result("cuda-op-fp16", lm, 5e-5, 3e-4, error_bound=2e-3),
               bench.Result("cuda-op-fp32", deit, 2e-4, 4e-7, error_bound=1e-5),
               bench.Result("cuda-op-fp16", deit, skipped="needs ~9.0 GiB")]
    (tmp_path / "bench-cuda").mkdir()
    (tmp_path / "bench-cuda" / "bench.json").write_text(json.dumps({"results": bench.records(results)}))
    (tmp_path / "tensorrt.log").write_text("TensorRT on this machine: no python tensorrt; no libnvinfer in ldconfig\n")
    script = Path(__file__).parents[1] / "scripts" / "gpu_summary.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "GPU tests: no report (test_cuda_kernel.xml missing)" in out
    assert "parity float32: worst normwise error 4.0e-07 (bound 1e-05) over 2 shapes, 0 skipped" in out
    assert "parity float16: worst normwise error 3.0e-04 (bound 2e-03) over 1 shapes, 1 skipped" in out
    assert f"| 1,8,256,16 | yes | {lm.pair_dims / 1e-4:.2e} | 40.0x | {lm.pair_dims / 5e-5:.2e} | 40.0x |" in out
    assert "| 1,3,197,64 | no | " in out and "skipped: needs ~9.0 GiB" in out
    assert out.rstrip().endswith("no libnvinfer in ldconfig")
