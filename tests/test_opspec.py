"""The op spec: attribute checks, and the C++ spec header that must mirror it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from fourierformer import opspec

SPEC_HEADER = Path(__file__).resolve().parent.parent / "plugins" / "common" / "fourier_attention_spec.h"
ONNX_TYPES = {float: "FLOAT", int: "INT"}


def _header_constants() -> dict[str, str]:
    """``name -> literal`` of every ``constexpr`` line in the C++ spec header, in order."""
    pattern = re.compile(r"^constexpr\s+[\w:]+\s+(\w+)(?:\[\])?\s*=\s*(.+?);", re.M)
    return dict(pattern.findall(SPEC_HEADER.read_text()))


def _suffix(name: str) -> str:
    return name[0].upper() + name[1:]


def test_header_names_op_and_domains():
    c = _header_constants()
    assert c["kOpType"] == f'"{opspec.OP_TYPE}"'
    assert c["kDomain"] == f'"{opspec.DOMAIN}"' and int(c["kVersion"]) == opspec.VERSION
    assert c["kOrtDomain"] == f'"{opspec.ORT_DOMAIN}"' and int(c["kOrtVersion"]) == opspec.ORT_VERSION
    assert [c["kInputQ"], c["kInputK"], c["kInputV"], c["kInputR"]] == [f'"{n}"' for n in opspec.INPUTS]
    assert int(c["kNumOrtInputs"]) == len(opspec.INPUTS)  # the ONNX Runtime form: R an optional fourth input


def test_header_attributes_match_spec_in_order():
    c = _header_constants()
    names = [v.strip('"') for k, v in c.items() if re.fullmatch(r"kAttr(?!Type)\w+", k)]
    assert names == [a.name for a in opspec.ATTRIBUTES]
    assert int(c["kNumAttributes"]) == len(opspec.ATTRIBUTES)
    for a in opspec.ATTRIBUTES:
        suffix = _suffix(a.name)
        assert c[f"kAttrType{suffix}"] == f'"{ONNX_TYPES[a.type]}"'
        assert math.isclose(float(c[f"kDefault{suffix}"].rstrip("f")), a.default, rel_tol=1e-7)


def test_header_power_range_matches_spec():
    c = _header_constants()
    low, high = int(c["kMinPower"]), int(c["kMaxPower"])
    assert opspec.POWER.is_valid(low) and opspec.POWER.is_valid(high)
    assert not opspec.POWER.is_valid(low - 2) and not opspec.POWER.is_valid(high + 2)


def test_header_cuda_max_dim_matches_spec_and_kernel():
    assert int(_header_constants()["kCudaMaxDim"]) == opspec.CUDA_MAX_DIM
    kernel_header = (SPEC_HEADER.parents[1] / "cuda" / "fourier_attention_cuda.h").read_text()
    assert re.search(r"^#define FF_CUDA_MAX_DIM (\d+)$", kernel_header, re.M).group(1) == str(opspec.CUDA_MAX_DIM)


def test_defaults_are_valid_and_filled():
    assert opspec.check_attributes({}) == {a.name: a.default for a in opspec.ATTRIBUTES}


@pytest.mark.parametrize("name, value", [
    ("R", 0.0), ("R", -2.0), ("R", float("inf")), ("R", float("nan")), ("power", 3), ("power", 0), ("power", 66),
    ("power", 4.5), ("eps", 0.0), ("eps", float("inf")), ("causal", 2), ("causal", True),
])
def test_bad_values_name_the_attribute(name, value):
    with pytest.raises(ValueError, match=f"attribute {name}="):
        opspec.check_attributes({name: value})


def test_unknown_attribute_is_rejected():
    with pytest.raises(ValueError, match="no attribute"):
        opspec.check_attributes({"temperature": 1.0})


def test_readme_documents_the_spec():
    """The README's attribute table is the one the spec generates."""
    table = opspec.markdown_table()
    assert all(f"`{a.name}`" in table for a in opspec.ATTRIBUTES)
    assert table in (SPEC_HEADER.parents[2] / "README.md").read_text()
