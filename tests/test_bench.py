"""The bench command: implementations are checked before they are timed; reports in JSON, Markdown, PNG."""

from __future__ import annotations

import json

import pytest
import torch

from export import bench
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
