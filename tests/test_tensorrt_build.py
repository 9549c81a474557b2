"""TensorRT artifacts: ahead-of-time engine builds with TensorRT-RTX on a machine without a GPU.

Asserts on the network TensorRT builds from each artifact's ONNX (layers, types, shapes), not only on files.
"""

from __future__ import annotations

import collections
import importlib
import json
from pathlib import Path

import pytest

from export import builder as build_module
from export.builder import tensorrt_profiles
from export.artifact import load_manifest
from export.cli import EXIT_OK, EXIT_USER_ERROR, main
from export.errors import UserError
from export.passes import to_tensorrt
from export.recipes import load_recipe, recipe_names
from export.tensorrt_backend import check_no_plugin_nodes, gpu_missing_reason, installed_flavour
from fourierformer.configs import get_config

pytestmark = pytest.mark.skipif(installed_flavour() is None,
                                reason="needs TensorRT: neither `tensorrt` nor `tensorrt-rtx` is installed")
BUILDS = {  # (model, precision) -> compute capabilities
    ("tiny-vit", "fp16"): "89",  # the acceptance command
    ("tiny-vit", "fp32"): "86,89",
    ("tiny-lm", "fp16"): "86,89",
    ("tiny-lm", "fp32"): "86,89",
}
ATTENTION_LAYERS = 2  # tiny-vit depth, tiny-lm n_layers


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("engines")
    built = {}
    for (model, precision), caps in BUILDS.items():
        out = root / f"{model}-{precision}"
        assert main(["build-engine", "--model", model, "--backend", "tensorrt", "--precision", precision,
                     "--compute-capability", caps, "--timing-cache", str(root / "timing.cache"),
                     "--out", str(out)]) == EXIT_OK
        built[model, precision] = out
    return built


def _network(onnx_path: Path):
    """The strongly typed INetworkDefinition TensorRT parses from an artifact's ONNX."""
    from polygraphy.backend.trt import NetworkFromOnnxPath

    _, network, _ = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)()
    return network


def _layers(network) -> list:
    return [network.get_layer(i) for i in range(network.num_layers)]


@pytest.mark.parametrize("model, precision", list(BUILDS))
def test_manifest_records_the_tensorrt_build(engines, model, precision):
    directory = engines[model, precision]
    manifest = json.loads((directory / "manifest.json").read_text())
    caps = [int(c) for c in BUILDS[model, precision].split(",")]
    assert manifest["backend"] == "tensorrt" and manifest["attention"] == "decomposed"
    assert manifest["tensorrt"]["flavour"] == installed_flavour()
    assert manifest["tensorrt"]["compute_capabilities"] == caps
    assert manifest["tensorrt"]["profiles"]["batch"] == [1, 1, 16]
    assert manifest["tensorrt"]["plugin_built_for"] is None  # decomposed: no plugin
    assert manifest["plugin_library"] is None and manifest["engine_file"] == "model.engine"
    assert set(manifest["files"]) == {"model.onnx", "model.engine"}
    assert (directory / "model.engine").stat().st_size > 10_000


@pytest.mark.parametrize("model, precision", list(BUILDS))
def test_network_layers_types_and_shapes(engines, model, precision):
    trt = importlib.import_module(installed_flavour())

    network = _network(engines[model, precision] / "model.onnx")
    layers = _layers(network)
    types = collections.Counter(layer.type for layer in layers)
    io_type = trt.DataType.HALF if precision == "fp16" else trt.DataType.FLOAT
    first = network.get_input(0)
    if model == "tiny-vit":
        assert first.dtype == io_type and tuple(first.shape) == (-1, 3, 32, 32)
        assert tuple(network.get_output(0).shape) == (-1, 10)
    else:
        assert first.dtype == trt.DataType.INT64 and tuple(first.shape) == (-1, -1)
        assert tuple(network.get_output(0).shape) == (-1, -1, 512)
    assert network.get_output(0).dtype == io_type
    assert not any("PLUGIN" in str(t) for t in types)
    products = [layer for layer in layers if layer.type == trt.LayerType.REDUCE and "ReduceProd" in layer.name]
    assert len(products) == ATTENTION_LAYERS
    assert all(layer.get_output(0).dtype == trt.DataType.FLOAT for layer in products)  # reductions in float32
    sines = [layer for layer in layers if layer.type == trt.LayerType.UNARY and "Sin" in layer.name]
    assert len(sines) == ATTENTION_LAYERS
    norms = [layer for layer in layers if layer.type == trt.LayerType.NORMALIZATION]
    assert len(norms) == 2 * ATTENTION_LAYERS + (model == "tiny-vit")  # the LM is post-LN: no final norm
    assert all(layer.get_output(0).dtype == trt.DataType.FLOAT for layer in norms)  # LayerNorm in float32
    matmuls = [layer for layer in layers if layer.type == trt.LayerType.MATRIX_MULTIPLY and "/" not in layer.name]
    assert matmuls and all(layer.get_output(0).dtype == io_type for layer in matmuls)
    if model == "tiny-lm":  # causal mask from dynamic shapes
        assert sum(layer.type == trt.LayerType.FILL for layer in layers) >= 2 * ATTENTION_LAYERS


def test_plugin_attention_is_refused_on_tensorrt_rtx(tmp_path, capsys):
    if installed_flavour() != "tensorrt_rtx":
        pytest.skip("full TensorRT is installed: it holds plugins")
    assert main(["build-engine", "--model", "tiny-vit", "--backend", "tensorrt", "--attention", "plugin",
                 "--compute-capability", "89", "--out", str(tmp_path / "x")]) == EXIT_USER_ERROR
    assert "TensorRT-RTX cannot hold custom plugins" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_plugin_nodes_never_reach_the_rtx_parser():
    from export.builder import retarget
    from export.onnx_export import export_onnx
    from export.passes import cleanup
    from fourierformer.models import create_model

    config = get_config("tiny-vit")
    proto = retarget(export_onnx(create_model(config), config), (cleanup, to_tensorrt))
    with pytest.raises(UserError, match="cannot hold plugins.*FourierAttention"):
        check_no_plugin_nodes(proto)


@pytest.mark.skipif(gpu_missing_reason() is None, reason="a GPU is present: the no-GPU error path does not apply")
@pytest.mark.parametrize("command", ["run", "validate"])
def test_running_an_engine_without_gpu_says_what_is_missing(engines, capsys, command):
    assert main([command, str(engines["tiny-vit", "fp16"])]) == EXIT_USER_ERROR
    assert "running a TensorRT engine needs an NVIDIA GPU: no NVIDIA driver" in capsys.readouterr().err


@pytest.mark.parametrize("shapes, message", [
    (["batch=0:1:2"], "must satisfy 1 <= min <= opt <= max"),
    (["batch=4:2:8"], "must satisfy"),
    (["seq=1:2:3"], "not a dynamic dimension of this model"),
    (["batch=1:2"], "expected NAME=MIN:OPT:MAX"),
])
def test_bad_profiles_are_clear_errors(tmp_path, capsys, shapes, message):
    try:
        code = main(["build-engine", "--model", "tiny-vit", "--backend", "tensorrt", "--compute-capability", "89",
                     "--shapes", *shapes, "--out", str(tmp_path / "x")])
    except SystemExit as exc:  # argparse rejects malformed values
        code = exc.code
    assert code == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("capability, message", [
    ("70", "cannot build for compute capability 70; it builds for 80, 86"),
    ("90", "cannot build for compute capability 90; it builds for"),
    ("75", "cannot build for compute capability 75: TensorRT-RTX cannot compile"),
])
def test_compute_capabilities_tensorrt_rtx_cannot_build_for_are_refused_before_the_export(
        tmp_path, capsys, monkeypatch, capability, message):
    if installed_flavour() != "tensorrt_rtx":
        pytest.skip("needs tensorrt-rtx as the installed TensorRT (it builds ahead of time)")

    def no_export(*args, **kwargs):
        raise AssertionError("the model was exported before the compute capability was checked")

    monkeypatch.setattr(build_module, "export_onnx", no_export)
    assert main(["build-engine", "--model", "tiny-vit", "--backend", "tensorrt", "--compute-capability",
                 f"86,{capability}", "--out", str(tmp_path / "x")]) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", recipe_names())
def test_shipped_recipes_are_valid(name):
    recipe = load_recipe(name)
    assert recipe["backend"] == "tensorrt" and recipe["precision"] == "fp16"
    profiles = tensorrt_profiles(get_config(recipe["model"]), recipe["shapes"])
    assert all(low <= opt <= high for low, opt, high in profiles.values())


def test_recipes_cover_deit_and_the_small_lm():
    assert {load_recipe(n)["model"] for n in recipe_names()} >= {"deit-tiny", "lm-small"}
    assert load_recipe("deit-tiny-fp16")["shapes"]["batch"] == (1, 32, 64)


@pytest.mark.parametrize("installed, device, message", [
    (("tensorrt_rtx", "2.0.0"), 89, "built with tensorrt_rtx 1."),
    (("tensorrt", "1.7.1"), 89, "built with tensorrt_rtx"),
    (None, 90, "built for compute capabilities [86, 89], this GPU is 90"),
])
def test_engine_checks_before_tensorrt_would_fail(engines, monkeypatch, installed, device, message):
    """On a GPU machine, a flavour/version or compute-capability mismatch is refused up front."""
    from export import tensorrt_backend

    real = tensorrt_backend.load_tensorrt()
    flavour, version = installed or (real.flavour, real.version)
    monkeypatch.setattr(tensorrt_backend, "gpu_missing_reason", lambda: None)
    monkeypatch.setattr(tensorrt_backend, "load_tensorrt",
                        lambda: tensorrt_backend.TensorRT(real.module, flavour, version))
    monkeypatch.setattr(tensorrt_backend, "_device_compute_capability", lambda: device)
    manifest = load_manifest(engines["tiny-lm", "fp32"])
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tensorrt_backend.tensorrt_runner((engines["tiny-lm", "fp32"] / "model.engine").read_bytes(), manifest.tensorrt,
                                         None)


def test_a_failed_build_reports_tensorrts_errors_and_prints_nothing_else(tmp_path, capsys, monkeypatch):
    """TensorRT's log stays out of the output; a failure quotes its error lines (Turing cannot do FP32 GEMMs)."""
    if installed_flavour() != "tensorrt_rtx":
        pytest.skip("needs tensorrt-rtx as the installed TensorRT (it builds ahead of time)")
    import export.tensorrt_backend as tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "UNUSABLE_CAPABILITIES", {})  # let TensorRT-RTX itself refuse SM75
    assert main(["build-engine", "--model", "tiny-vit", "--backend", "tensorrt", "--compute-capability", "75",
                 "--out", str(tmp_path / "x")]) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err[captured.err.index("error: "):]
    assert error.startswith("error: TensorRT build failed: ")
    assert "[E]" in error and "FP32 GEMM is not supported" in error
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model, precision", sorted(BUILDS))
def test_the_manifest_records_the_precision_the_engine_was_built_with(engines, model, precision):
    """The network TensorRT built is float16-typed exactly when the manifest says fp16 (strongly typed)."""
    artifact = engines[model, precision]
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["precision"] == precision
    network = _network(artifact / manifest["onnx_file"])
    tensors = [*map(network.get_input, range(network.num_inputs)), *map(network.get_output, range(network.num_outputs))]
    floats = {str(t.dtype).split(".")[-1] for t in tensors} - {"INT64", "INT32"}
    assert floats == {"HALF" if precision == "fp16" else "FLOAT"}
    assert {t["dtype"] for t in manifest["outputs"]} == {"float16" if precision == "fp16" else "float32"}
