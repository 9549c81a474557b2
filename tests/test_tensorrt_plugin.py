"""The TensorRT plugin library libfourierformer_trt.so, checked without TensorRT.

The C++ harness (plugins/tensorrt/harness/plugin_harness.cc) dlopens the plugin and drives its
IPluginV3 interfaces with TensorRT's headers only. Plugin fields are produced from ONNX attributes with
the rules of TensorRT's ONNX parser (onnx-tensorrt, onnxOpImporters.cpp: the FallbackPluginImporter
finds the creator by op_type + the STRING attributes plugin_version (default "1") and plugin_namespace
(default ""), then loadFields() walks the creator's getFieldNames() and, for each name present as an
attribute, passes FLOAT as kFLOAT32, INT as kINT32 (read as int32), STRING as kCHAR; attributes the
creator does not list are not passed, listed ones that are absent are skipped).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from export import plugin_library
from export.errors import UserError
from export.passes import to_tensorrt
from fourierformer import opspec

NO_GPU_REASON = "needs an NVIDIA GPU (no CUDA device on this machine)"
EXIT_NO_DEVICE = 77
EXPORTED = {"getCreators", "setLoggerFinder", "ff_trt_plugin_tensorrt_version"}
PLUGIN_LINE = "FourierAttention TensorRT plugin: "
"""How the plugin's messages begin, on stderr or through TensorRT's logger."""
FAKE_TENSORRT = 'extern "C" int getInferLibVersion() noexcept {{ return {version}; }}\n'
"""A stand-in for TensorRT's runtime library, as far as the plugin looks at it."""


@pytest.fixture(scope="module")
def built() -> tuple[Path, Path]:
    """(plugin library, harness), built by the project's build driver."""
    try:
        return plugin_library.trt_plugin_library(), plugin_library.plugin_harness()
    except UserError as exc:
        pytest.skip(f"the TensorRT plugin was not built: {exc}")


def run_harness(built, fields: list[str], *extra: str) -> tuple[int, dict, str]:
    """Run the harness with --field arguments; (exit code, its JSON object, stderr)."""
    library, harness = built
    args = [str(harness), str(library)]
    for field in fields:
        args += ["--field", field]
    result = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip(), f"harness printed nothing (exit {result.returncode}):\n{result.stderr}"
    return result.returncode, json.loads(result.stdout), result.stderr


def failed_checks(report: dict) -> list[dict]:
    return [c for c in report["checks"] if not c["ok"]]


def plugin_lines(stderr: str) -> list[str]:
    """The plugin's own messages on stderr (the harness' lines left out)."""
    return [line for line in stderr.splitlines() if line.startswith(PLUGIN_LINE)]


def dim_refusals(lines: list[str]) -> list[str]:
    """The messages refusing head dim CUDA_MAX_DIM + 1."""
    above = f"D={opspec.CUDA_MAX_DIM + 1} (last axis of q, k, v) is above {opspec.CUDA_MAX_DIM}, the most"
    return [line for line in lines if above in line]


@pytest.fixture(scope="module")
def headers_major(built) -> int:
    """The major version of the TensorRT headers the plugin was built against."""
    _, report, _ = run_harness(built, [])
    return int(report["plugin_built_for"].split(".")[0])


@pytest.fixture(scope="module")
def fake_tensorrt(tmp_path_factory):
    """make(soname, version): a shared library with that soname whose getInferLibVersion returns version."""
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (c++) to build a stand-in TensorRT library")
    folder = tmp_path_factory.mktemp("fake-tensorrt")

    def make(soname: str, version: int) -> Path:
        out = folder / f"{version}" / soname
        out.parent.mkdir(exist_ok=True)
        subprocess.run([compiler, "-x", "c++", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(out), "-"],
                       input=FAKE_TENSORRT.format(version=version), text=True, capture_output=True, check=True)
        return out

    return make


# ---- TensorRT's ONNX parser, as far as plugin nodes go ------------------------------------------------

def parser_plugin_lookup(node: onnx.NodeProto) -> tuple[str, str, str]:
    """(plugin name, version, namespace) the parser's FallbackPluginImporter asks the registry for."""
    attrs = {a.name: a for a in node.attribute}

    def string(name: str, default: str) -> str:
        if name not in attrs:
            return default
        assert attrs[name].type == onnx.AttributeProto.STRING, f"{name} must be a STRING attribute"
        return attrs[name].s.decode()

    return node.op_type, string("plugin_version", "1"), string("plugin_namespace", "")


def parser_plugin_fields(node: onnx.NodeProto, creator_field_names: list[str]) -> list[str]:
    """The node's attributes as the parser's loadFields() hands them to createPlugin, in harness syntax."""
    attrs = {a.name: a for a in node.attribute}
    fields = []
    for name in creator_field_names:  # the creator's getFieldNames() order; unlisted attributes are dropped
        if name not in attrs:
            continue  # "Attribute ... not found in plugin node!" warning: the creator's default applies
        attr = attrs[name]
        if attr.type == onnx.AttributeProto.FLOAT:
            fields.append(f"{name}:FLOAT32={float(np.float32(attr.f))!r}")
        elif attr.type == onnx.AttributeProto.INT:
            fields.append(f"{name}:INT32={int(np.int64(attr.i).astype(np.int32))}")  # attrs.get<int32_t>
        elif attr.type == onnx.AttributeProto.STRING:
            fields.append(f"{name}:CHAR={attr.s.decode()}")
        else:
            raise AssertionError(f"attribute {name} of type {attr.type} is not a plugin field type the parser passes")
    return fields


def field_args(values: dict[str, float | int]) -> list[str]:
    """Harness fields for attribute values, typed as the parser types ONNX FLOAT / INT attributes."""
    return [f"{name}:{'FLOAT32' if opspec.BY_NAME[name].type is float else 'INT32'}={value!r}"
            for name, value in values.items()]


# ---- the library itself -----------------------------------------------------------------------------

def test_exports_exactly_the_entry_points(built):
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", str(built[0])], capture_output=True, text=True, check=True)
    symbols = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
    assert symbols == EXPORTED


def test_needs_no_tensorrt_library(built):
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run(["readelf", "-d", str(built[0])], capture_output=True, text=True, check=True)
    needed = [line.split("[")[-1].rstrip("]") for line in out.stdout.splitlines() if "(NEEDED)" in line]
    assert needed, out.stdout
    assert not [n for n in needed if "nvinfer" in n or "cudart" in n or n.startswith("libcuda.")], needed


def test_reports_tensorrt_headers_version(built):
    code, report, err = run_harness(built, [])
    assert code == 0, err
    major, minor, patch = report["plugin_built_for"].split(".")
    assert int(major) >= 10 and minor.isdigit() and patch.isdigit()
    assert report["plugin_built_for"] == report["tensorrt_headers"]


# ---- CPU checks of the plugin's interfaces ------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {},
    dict(R=0.25, power=8, eps=1e-5, causal=1),
    dict(R=3.5, power=64, eps=0.5, causal=0),
    dict(R=1e-3, power=2, eps=1e-12, causal=1),
], ids=["defaults", "R0.25-p8-causal", "p64", "p2-tiny"])
def test_cpu_checks_pass(built, values):
    code, report, err = run_harness(built, field_args(values))
    assert code == 0 and not failed_checks(report), (failed_checks(report), err)
    expected = opspec.check_attributes(values)
    reported = report["fields"]
    assert list(reported) == [a.name for a in opspec.ATTRIBUTES]
    for attr in opspec.ATTRIBUTES:
        assert reported[attr.name]["type"] == ("FLOAT32" if attr.type is float else "INT32")
        want = np.float32(expected[attr.name]) if attr.type is float else expected[attr.name]
        assert reported[attr.name]["value"] == want, attr.name


def test_creator_declares_the_spec_fields(built):
    _, report, _ = run_harness(built, [])
    declared = report["creator_fields"]
    assert list(declared) == [a.name for a in opspec.ATTRIBUTES]
    assert [f["type"] for f in declared.values()] == ["FLOAT32" if a.type is float else "INT32"
                                                       for a in opspec.ATTRIBUTES]


def test_wider_field_types_are_accepted(built):
    code, report, err = run_harness(built, ["R:FLOAT64=0.1", "power:INT64=6", "causal:INT8=1"])
    assert code == 0, (failed_checks(report), err)
    assert report["fields"]["R"]["value"] == np.float32(0.1)
    assert report["fields"]["power"]["value"] == 6 and report["fields"]["causal"]["value"] == 1


@pytest.mark.parametrize("fields", [
    ["power:INT32=3"], ["power:INT32=66"], ["R:FLOAT32=-1"], ["R:FLOAT32=0"], ["R:FLOAT32=inf"],
    ["eps:FLOAT32=0"], ["eps:FLOAT32=nan"], ["causal:INT32=2"], ["temperature:FLOAT32=1"],
    ["plugin_version:CHAR=1"], ["power:FLOAT32=4"], ["R:INT32=1"], ["R:CHAR=1.5"], ["causal:FLOAT64=1"],
    ["power:INT64=4294967300"], ["R:FLOAT16=1"],
])
def test_bad_fields_are_rejected(built, fields):
    code, report, err = run_harness(built, fields, "--expect-reject")
    assert code == 0 and report["created"] is False, (report, err)
    assert "FourierAttention TensorRT plugin" in err  # the reason went to stderr


def test_head_dim_above_the_kernel_maximum_is_refused(built):
    code, report, err = run_harness(built, [])
    assert code == 0, (failed_checks(report), err)
    checks = {c["name"]: c["ok"] for c in report["checks"]}
    assert checks["head_dim_max_accepted"] and checks["head_dim_above_max_refused"]
    # No TensorRT in the process: configurePlugin (D, then the profile's largest D) and onShapeChange say why on stderr.
    refusals = dim_refusals(plugin_lines(err))
    assert [line.split(": ")[1] for line in refusals] == ["configurePlugin", "configurePlugin", "onShapeChange"]
    assert report["logged"] == []


def test_messages_go_through_the_tensorrt_logger_when_majors_match(built, headers_major, fake_tensorrt):
    library = fake_tensorrt(f"libnvinfer.so.{headers_major}", headers_major * 10000 + 1401)
    code, report, err = run_harness(built, [], "--tensorrt-library", str(library))
    assert code == 0 and not failed_checks(report), (failed_checks(report), err)
    logged = [m["text"] for m in report["logged"]]
    assert len(dim_refusals(logged)) == 3 and {m["severity"] for m in report["logged"]} == {1}  # kERROR
    assert all(text.startswith(PLUGIN_LINE) for text in logged)
    assert not plugin_lines(err)  # nothing bypassed the logger


@pytest.mark.parametrize("soname_major, version_major", [(0, 1), (1, 1)], ids=["same-soname", "next-major"])
def test_tensorrt_logger_is_not_used_across_majors(built, headers_major, fake_tensorrt, soname_major, version_major):
    """A loaded TensorRT of another major (by its getInferLibVersion, or its soname) hands out loggers of
    another ABI: the plugin must not call them, and writes its messages on stderr."""
    library = fake_tensorrt(f"libnvinfer.so.{headers_major + soname_major}", (headers_major + version_major) * 10000)
    code, report, err = run_harness(built, [], "--tensorrt-library", str(library))
    assert code == 0 and not failed_checks(report), (failed_checks(report), err)
    assert report["tensorrt_runtime"] == (headers_major + version_major) * 10000
    assert report["logged"] == [] and len(dim_refusals(plugin_lines(err))) == 3


def test_metadata_string_describes_the_plugin(built):
    code, report, err = run_harness(built, field_args(dict(R=0.25, power=8, eps=1e-5, causal=1)))
    assert code == 0 and not failed_checks(report), (failed_checks(report), err)
    assert report["metadata"] == (f"FourierAttention v1 R=0.25 power=8 eps=1e-05 causal=1 "
                                  f"max_dim={opspec.CUDA_MAX_DIM} tensorrt={report['plugin_built_for']}")


def test_bad_fields_fail_the_normal_run(built):
    code, report, _ = run_harness(built, ["power:INT32=3"])
    assert code == 1
    assert [c["name"] for c in failed_checks(report)] == ["create_build_phase"]


# ---- GPU ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{}, dict(R=0.25, power=8, eps=1e-5, causal=1)], ids=["defaults", "causal"])
def test_enqueue_matches_float64_reference(built, values):
    code, report, err = run_harness(built, field_args(values), "--enqueue")
    if code == EXIT_NO_DEVICE:
        assert report["enqueue"]["status"] == "skipped" and "no CUDA device" in report["enqueue"]["reason"]
        pytest.skip(NO_GPU_REASON)
    assert code == 0 and not failed_checks(report), (failed_checks(report), err)
    assert report["enqueue"]["status"] == "ran" and report["enqueue"]["relative_error"] <= 1e-5


# ---- contract with the to_tensorrt graph pass and TensorRT's ONNX parser ---------------------------------

def portable_graph(R: float, power: int, eps: float, causal: int) -> gs.Graph:
    """One portable-form FourierAttention node (as the exporter writes it): inputs q, k, v and a constant R."""
    q = gs.Variable("q", np.float32, ["B", "H", "Nq", "D"])
    k = gs.Variable("k", np.float32, ["B", "H", "Nk", "D"])
    v = gs.Variable("v", np.float32, ["B", "H", "Nk", "D"])
    out = gs.Variable("out", np.float32, ["B", "H", "Nq", "D"])
    r = gs.Constant("R", np.array(R, dtype=np.float32))
    node = gs.Node(opspec.OP_TYPE, "attention", attrs=dict(power=power, eps=eps, causal=causal),
                   inputs=[q, k, v, r], outputs=[out], domain=opspec.DOMAIN)
    return gs.Graph(nodes=[node], inputs=[q, k, v], outputs=[out], opset=18,
                    import_domains=[helper.make_opsetid("", 18), helper.make_opsetid(opspec.DOMAIN, opspec.VERSION)])


@pytest.mark.parametrize("values", [dict(R=1.0, power=4, eps=1e-6, causal=0),
                                    dict(R=0.25, power=8, eps=1e-5, causal=1)], ids=["defaults", "causal"])
def test_to_tensorrt_node_maps_onto_the_plugin(built, values):
    model = gs.export_onnx(to_tensorrt(portable_graph(**values)))
    [node] = [n for n in model.graph.node if n.op_type == opspec.OP_TYPE]
    attr_types = {a.name: a.type for a in node.attribute}
    assert attr_types == {"R": onnx.AttributeProto.FLOAT, "power": onnx.AttributeProto.INT,
                          "eps": onnx.AttributeProto.FLOAT, "causal": onnx.AttributeProto.INT,
                          "plugin_version": onnx.AttributeProto.STRING, "plugin_namespace": onnx.AttributeProto.STRING}
    assert list(node.input) == ["q", "k", "v"]

    _, creator, _ = run_harness(built, [])
    creator_field_names = list(creator["creator_fields"])
    # The parser finds the creator the harness uses: FourierAttention, version "1", namespace "".
    assert parser_plugin_lookup(node) == (opspec.OP_TYPE, opspec.PLUGIN_VERSION, opspec.PLUGIN_NAMESPACE)
    # Every op attribute reaches the plugin (the parser silently drops attributes the creator does not list).
    dropped = set(attr_types) - set(creator_field_names) - {"plugin_version", "plugin_namespace"}
    assert not dropped, f"attributes TensorRT would not pass to the plugin: {dropped}"

    fields = parser_plugin_fields(node, creator_field_names)
    code, report, err = run_harness(built, fields)
    assert code == 0 and not failed_checks(report), (failed_checks(report), err)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for attr in opspec.ATTRIBUTES:
        reported = report["fields"][attr.name]["value"]
        assert reported == (np.float32(attrs[attr.name]) if attr.type is float else attrs[attr.name]), attr.name
        assert reported == (np.float32(values[attr.name]) if attr.type is float else values[attr.name]), attr.name
