"""Fuzzing the command line (issue #11, section 3): random argument vectors, manifest mutations, npz inputs and
recipe files. The property, every time: exit code 0, 1 or 2, no Python traceback without -v, and no file
changed outside the --out folder. Bounded: a few dozen examples each, under three minutes in all."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.artifact import MANIFEST
from export.cli import EXIT_OK, main

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def place(tmp_path_factory, ort_library) -> dict[str, Path]:
    """A working folder holding a built artifact, a user folder (never to be replaced) and a plain file."""
    root = tmp_path_factory.mktemp("fuzz")
    assert main(["build-engine", "--model", "tiny-vit", "--out", str(root / "artifact")]) == EXIT_OK
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep")
    (root / "a-file").write_text("x")
    return {"root": root, "artifact": root / "artifact", "mine": root / "mine", "file": root / "a-file"}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(argv: list[str]) -> tuple[int, str]:
    """main(argv) with its stderr; SystemExit (argparse) is an exit code too."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _holds(argv: list[str], root: Path, allowed: Path | None = None) -> None:
    """Run ``argv`` and check the property; ``allowed`` is the one folder it may write."""
    before = _snapshot(root)
    code, err = _run(argv)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    after = _snapshot(root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    outside = {k for k in changed if allowed is None or not (root / k).is_relative_to(allowed)}
    assert not outside, (argv, sorted(outside))


VALUES = ["-1", "0", "1", "3", "64", "1000000000", str(2**64), "nan", "inf", "x", "", "1e9", "86,89", "75",
          "batch=1:2:3", "seq=0:1:2", "tiny-vit", "tiny-lm", "nope", "fp16", "onnxruntime", "tensorrt", "decomposed"]
FLAGS = ["--batch", "--seq", "--input-seed", "--seed", "--atol", "--rtol", "--max-norm-error", "--repeats", "--warmup",
         "--backend", "--precision", "--attention", "--shapes", "--compute-capability", "--opset", "--model",
         "--recipe", "--input", "--output", "--checkpoint", "--json", "-v", "-q", "--ema", "--nope", "--force"]


@FUZZ
@given(command=st.sampled_from(["models", "run", "validate", "bench", "build-engine", "onnx", "nonsense"]),
       words=st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES),
                                st.sampled_from(["{artifact}", "{mine}", "{file}", "{file}/x", "{root}/missing"])),
                      max_size=6))
def test_random_argument_vectors(place, command, words):
    paths = {k: str(v) for k, v in place.items()}
    argv = [command, *(w.format(**paths) for w in words)]
    if "-v" in argv:
        argv.remove("-v")  # -v shows tracebacks by design
    if command in ("build-engine", "onnx"):
        argv += ["--out", f"{paths['mine'] if command == 'build-engine' else paths['file'] + '/m.onnx'}"]
    if command == "bench" and "{artifact}" not in words:
        argv += ["--sizes", "x"]  # the op benchmark is slow: only its argument errors are fuzzed
    _holds(argv, place["root"])


def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=12), st.sampled_from(["../x", "/etc/passwd", "model.onnx", "a/../b"]))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                        max_leaves=8)


def _paths(document: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, prefix + (index,))
    return found


@FUZZ
@given(data=st.data())
def test_random_manifest_mutations(place, tmp_path_factory, data):
    artifact = tmp_path_factory.mktemp("mutated") / "artifact"
    shutil.copytree(place["artifact"], artifact)
    manifest = json.loads((artifact / MANIFEST).read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(manifest)))
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(_json_values())
        else:
            parent[path[-1]] = data.draw(_json_values())
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    _holds(["run", str(artifact)], artifact.parent)


@FUZZ
@given(arrays=st.dictionaries(
    st.sampled_from(["images", "tokens", "x", ""]),
    st.tuples(st.sampled_from(["float32", "float64", "float16", "int64", "int8", "bool", "object", "complex64"]),
              st.lists(st.integers(0, 40), min_size=0, max_size=5)),
    max_size=3))
def test_random_npz_inputs(place, tmp_path_factory, arrays):
    folder = tmp_path_factory.mktemp("npz")
    contents = {}
    for name, (dtype, shape) in arrays.items():
        if int(np.prod(shape)) > 1 << 16:
            shape = shape[:2]
        contents[name or "empty"] = (np.empty(shape, dtype=object) if dtype == "object"
                                     else np.ones(shape, dtype=dtype))
    np.savez(folder / "in.npz", **contents)
    _holds(["run", str(place["artifact"]), "--input", str(folder / "in.npz"), "--output", str(folder / "out" / "o")],
           folder, allowed=folder / "out")


KEYS = ["model", "backend", "precision", "attention", "compute_capabilities", "shapes", "colour"]


def _toml_value():
    return st.one_of(st.integers(-5, 100), st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", max_size=10),
                     st.booleans(), st.lists(st.integers(-2, 100), max_size=4),
                     st.sampled_from(["tiny-vit", "onnxruntime", "tensorrt", "fp16", "plugin", "[1, 2]"]))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(KEYS), _toml_value(), max_size=5),
       shapes=st.dictionaries(st.sampled_from(["batch", "seq", "x"]), st.lists(st.integers(-1, 70), max_size=4),
                              max_size=2),
       garbage=st.sampled_from(["", "=", "[[x]]\n", "model = \n"]))
def test_random_recipe_files(place, tmp_path_factory, entries, shapes, garbage):
    folder = tmp_path_factory.mktemp("recipe")
    lines = [f"{key} = {_toml(value)}" for key, value in entries.items() if key != "shapes"]
    if shapes:
        lines += ["[shapes]", *(f"{dim} = {_toml(value)}" for dim, value in shapes.items())]
    (folder / "r.toml").write_text("\n".join(lines) + "\n" + garbage)
    # the out folder holds a user's file: every recipe is either refused or stops there, before a slow step
    _holds(["build-engine", "--recipe", str(folder / "r.toml"), "--out", str(place["mine"])], folder)
    assert (place["mine"] / "notes.txt").read_text() == "keep"
