"""The bench command: implementations are checked before they are timed, and the table reports each."""

from __future__ import annotations

import numpy as np
import pytest

from export import bench
from export.cli import EXIT_OK, main


def test_bench_reports_every_implementation(ort_library, tmp_path, capsys):
    assert main(["bench", "--sizes", "1,2,33,17", "--causal", "--repeats", "2", "--out", str(tmp_path)]) == EXIT_OK
    table = (tmp_path / "bench.md").read_text()
    for name in ("eager-fp32", "onnxruntime-op"):
        assert table.count(f"| {name} |") == 2
    assert "cores" in table.splitlines()[0]


def test_bench_refuses_to_time_a_wrong_implementation(ort_library, monkeypatch):
    real = bench._implementations

    def with_wrong_op(shape, threads):
        implementations = real(shape, threads)
        implementations["onnxruntime-op"] = lambda feeds: np.zeros_like(feeds["q"])
        return implementations

    monkeypatch.setattr(bench, "_implementations", with_wrong_op)
    with pytest.raises(RuntimeError, match="disagrees with eager"):
        bench.bench_op(bench.Shape(1, 1, 8, 4))


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,x", "0,1,1,1"])
def test_bench_rejects_bad_sizes(text, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", text])
    err = capsys.readouterr().err
    assert "B,H,N,D" in err or "sizes must be >= 1" in err
