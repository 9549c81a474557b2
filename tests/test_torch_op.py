"""The PyTorch custom op on our kernels (export/torch_op.py) and fuse(model): CPU in CI, CUDA on a GPU."""

from __future__ import annotations

import pytest
import torch
from conftest import attention_inputs, rounded_parity_error

from export import cpu_kernel, cuda_kernel
from export.torch_op import FusedFourierAttention, fourier_attention, fuse
from export.validate import error_stats
from fourierformer import configs
from fourierformer.attention import FourierAttention
from fourierformer.models import create_model, example_inputs

EPS = 1e-6
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3}
"""Normwise error bound vs the float64 oracle of the (rounded) inputs."""
SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 9, 3), (1, 2, 37, 53, 17), (1, 1, 70, 66, 33), (1, 2, 40, 33, 128)]
GPU_MISSING = cuda_kernel.available()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")


def _error(shape, R, power, causal, dtype, device) -> float:
    """Normwise error of the op on ``device`` vs the float64 oracle of the inputs rounded to ``dtype``."""
    def run(q, k, v):
        q, k, v = (t.to(device) for t in (q, k, v))
        out = torch.ops.fourierformer.fourier_attention(q, k, v, R, power, EPS, bool(causal))
        assert out.device == q.device
        return out
    return rounded_parity_error(run, shape, R, power, causal, dtype, EPS)


def test_opcheck_schema_fake_and_dispatch():
    """torch.library.opcheck: schema, fake (meta) implementation and dispatch agree with the real kernel."""
    x = {k: torch.from_numpy(v) for k, v in attention_inputs(2, 2, 9, 13, 24, R=1.0).items()}
    for causal in (False, True):
        torch.library.opcheck(fourier_attention, (x["q"], x["k"], x["v"], 1.0, 4, EPS, causal))


def test_strided_and_non_contiguous_inputs_on_cpu():
    x = {k: torch.from_numpy(v) for k, v in attention_inputs(2, 3, 20, 30, 16, R=1.0).items()}
    expected = fourier_attention(x["q"], x["k"], x["v"], 1.0, 4, EPS, False)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in x.values()]
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(fourier_attention(*strided, 1.0, 4, EPS, False), expected, rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 3])
def test_cpu_result_does_not_depend_on_the_thread_count(threads):
    x = {k: torch.from_numpy(v) for k, v in attention_inputs(2, 3, 150, 130, 40, R=1.0).items()}
    expected = fourier_attention(x["q"], x["k"], x["v"], 1.0, 4, EPS, True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fourier_attention(x["q"], x["k"], x["v"], 1.0, 4, EPS, True)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_concurrent_calls_from_python_threads_match_one_call():
    """The kernel's thread pool takes one call at a time; a call that finds it busy runs alone, with equal results."""
    from concurrent.futures import ThreadPoolExecutor

    x = {k: torch.from_numpy(v) for k, v in attention_inputs(2, 3, 90, 70, 24, R=1.0).items()}
    expected = fourier_attention(x["q"], x["k"], x["v"], 1.0, 4, EPS, False)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: fourier_attention(x["q"], x["k"], x["v"], 1.0, 4, EPS, False), range(16)))
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def _isa_or_skip(isa: str) -> None:
    if (reason := cpu_kernel.isa_unsupported(isa)) is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("isa", cpu_kernel.ISAS)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("R, power", [(0.1, 2), (1.0, 4), (10.0, 8), (1e-20, 4), (1e20, 2)], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_cpu_path_parity_with_float64_oracle(shape, R, power, causal, dtype, isa):
    """Each instruction-set path this CPU runs (FF_CPU_ISA's choices), extreme R included (R not folded)."""
    _isa_or_skip(isa)
    if dtype == torch.float16 and not 1e-3 <= R <= 1e3:
        pytest.skip("float16 inputs cannot hold a spread of 1/R")
    with cpu_kernel.forced_isa(isa):
        assert cpu_kernel.isa() == isa
        assert _error(shape, R, power, causal, dtype, "cpu") <= TOLERANCE[dtype]


def test_paths_are_named_and_an_unknown_one_is_refused():
    assert cpu_kernel.isa() in cpu_kernel.ISAS
    assert "baseline" in cpu_kernel.runnable_isas()
    with pytest.raises(ValueError, match="FF_CPU_ISA must be auto, avx512, avx2 or baseline"):
        with cpu_kernel.forced_isa("avx1024"):
            pass


def test_no_keys_gives_zeros_and_empty_queries_give_empty():
    q = torch.randn(2, 3, 5, 16)
    empty = torch.zeros(2, 3, 0, 16)
    out = fourier_attention(q, empty, empty, 1.0, 4, EPS, False)
    assert out.shape == q.shape and not out.any()
    assert fourier_attention(empty, q, q, 1.0, 4, EPS, False).shape == empty.shape


@pytest.mark.parametrize("args, error, message", [
    ({"power": 3}, ValueError, "power must be an even integer"),
    ({"R": -1.0}, ValueError, "R must be finite and > 0"),
    ({"q": torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16)}, ValueError, "one dtype among"),
    ({"k": torch.zeros(1, 2, 4, 9)}, ValueError, "disagree"),
    ({"q": torch.zeros(2, 4, 8)}, ValueError, "rank-4"),
], ids=["power3", "negative-R", "bfloat16-on-cpu", "dim-mismatch", "rank3"])
def test_bad_input_is_a_clear_error(args, error, message):
    call = {"q": torch.zeros(1, 2, 4, 8), "k": torch.zeros(1, 2, 6, 8), "v": torch.zeros(1, 2, 6, 8),
            "R": 1.0, "power": 4, "eps": EPS, "causal": False}
    call.update(args)
    if "k" in args:
        call["v"] = args["k"]
    with pytest.raises(error, match=message):
        fourier_attention(**call)


@pytest.mark.parametrize("name", ["tiny-lm", "tiny-vit"])
def test_fuse_gives_every_fourier_attention_our_kernel_and_keeps_the_outputs(name):
    config = configs.get_config(name)
    model = create_model(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FourierAttention):
                module.paramR.fill_(-0.7)  # a trained-looking R (its sign does not matter), frozen by fuse
    inputs = example_inputs(config, 2, None, 0)
    with torch.no_grad():
        expected = model(**inputs)
        names = list(model.state_dict())
        fused = fuse(model)
        assert list(fused.state_dict()) == names
        kernels = [m.fused for m in fused.modules() if isinstance(m, FourierAttention)]
        assert len(kernels) == 2 and all(isinstance(m, FusedFourierAttention) and m.R == pytest.approx(0.7)
                                         for m in kernels)
        got = fused(**inputs)
    assert error_stats("logits", got.numpy(), expected.double().numpy()).norm_rel <= 1e-5


@needs_gpu
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_parity_with_float64_oracle(shape, causal, dtype):
    assert _error(shape, 1.0, 4, causal, dtype, "cuda") <= TOLERANCE[dtype]


@needs_gpu
def test_cuda_graph_capture_and_replay():
    """The op captures into a CUDA graph (no host synchronization) and replays to the eager result."""
    x = [torch.from_numpy(v).cuda() for v in attention_inputs(2, 4, 100, 100, 64, R=1.0).values()]
    expected = fourier_attention(*x, 1.0, 4, EPS, True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fourier_attention(*x, 1.0, 4, EPS, True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
