"""The package as users install it: the README's wheel commands, exactly as written, in a fresh clone and a fresh
venv outside it (HOME is a temporary folder), then a venv with ONNX Runtime only, which runs the artifact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_COMMAND = "python3 -m pip wheel"
VENV = "~/.venvs/fourierformer-deploy"
RUNTIME_LIBRARIES = {"libfourierformer_ort.so", "libfourierformer_cpu.so"}

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                                reason="needs git and a git checkout of this repository (to clone it)")


def _wheel_commands() -> list[str]:
    """The README's install-as-a-package block: the indented lines from the first ``pip wheel`` on."""
    section = (REPO / "README.md").read_text().split("## Install it as a package", 1)[1].split("\n## ", 1)[0]
    lines = [line[4:] for line in section.splitlines() if line.startswith("    ")]
    return lines[next(i for i, line in enumerate(lines) if line.startswith(FIRST_COMMAND)):]


def _run(command: list[str] | str, cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    shell = isinstance(command, str)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command] if shell else command, cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Run the README's commands in a fresh clone with an empty HOME; what they made."""
    root = tmp_path_factory.mktemp("package")
    clone, home, tmp = root / "clone", root / "home", root / "tmp"
    home.mkdir()
    tmp.mkdir()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "FOURIERFORMER_BUILD_DIR", "FOURIERFORMER_CACHE_DIR",
                        "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    script = "\n".join(_wheel_commands()) + '\necho "WORKDIR=$PWD"\n'
    result = _run(script, clone, env)
    workdir = Path(result.stdout.rsplit("WORKDIR=", 1)[1].strip())
    return {"clone": clone, "home": home, "env": env, "venv": Path(VENV.replace("~", str(home))),
            "stdout": result.stdout, "workdir": workdir}


def test_readme_wheel_commands_build_and_validate_from_an_empty_folder(installed):
    assert "PASSED" in installed["stdout"]
    workdir = installed["workdir"]
    assert not workdir.is_relative_to(installed["clone"])
    assert sorted(p.name for p in workdir.iterdir()) == ["engines"], "the run wrote into the working folder"
    manifest = json.loads((workdir / "engines/built/tiny-vit-onnxruntime-fp32/manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["plugin_library"] == "libfourierformer_ort.so"


def test_wheel_ships_its_libraries_sources_and_recipes(installed):
    wheels = list((installed["clone"] / "dist").glob("fourierformer_deploy-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert {f"export/native/{name}" for name in RUNTIME_LIBRARIES} <= names
    assert {"export/native/src/CMakeLists.txt", "export/recipes/deit-tiny-fp16.toml", "export/cli.py",
            "fourierformer/models.py"} <= names
    assert not any(name.startswith(("tests/", "plugins/", "engines/")) or "__pycache__" in name for name in names)


def test_installed_tool_used_the_shipped_libraries_and_no_cuda_torch(installed):
    cache = installed["home"] / ".cache" / "fourierformer-deploy"
    assert not (cache / "plugins").exists(), "a plugin library was built although the wheel ships it"
    packages = _run([str(installed["venv"] / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                    installed["clone"], installed["env"]).stdout
    names = {p["name"].lower() for p in json.loads(packages)}
    assert "torch" in names and not any(n.startswith("nvidia-") for n in names), sorted(names)
    version = _run([str(installed["venv"] / "bin" / "fourierformer-deploy"), "--version"], installed["home"],
                   installed["env"]).stdout
    assert version.split() == ["fourierformer-deploy", "0.1.0"]
    recipes = _run([str(installed["venv"] / "bin" / "fourierformer-deploy"), "build-engine", "--help"],
                   installed["home"], installed["env"]).stdout
    assert "deit-tiny-fp16" in recipes


ONLY_ORT_RUN = """
import sys
import numpy as np
import export
artifact = export.load(sys.argv[1])
images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
print(artifact.run({"images": images})["logits"].shape)
print(sorted(m for m in ("torch", "onnx", "polygraphy", "onnx_graphsurgeon") if m in sys.modules))
"""


def test_an_onnxruntime_only_install_runs_the_artifact_without_torch(installed, tmp_path):
    env, clone = installed["env"], installed["clone"]
    venv = tmp_path / "ort-only"
    _run(["python3", "-m", "venv", str(venv)], tmp_path, env)
    _run([str(venv / "bin" / "pip"), "install", "-q", "-c", "constraints.txt", "--find-links", "dist",
          "fourierformer-deploy[onnxruntime]"], clone, env)
    packages = {p["name"].lower() for p in json.loads(
        _run([str(venv / "bin" / "pip"), "list", "--format=json"], tmp_path, env).stdout)}
    assert not packages & {"torch", "onnx", "polygraphy", "onnx-graphsurgeon"}, sorted(packages)
    artifact = installed["workdir"] / "engines/built/tiny-vit-onnxruntime-fp32"
    lines = _run([str(venv / "bin" / "python"), "-c", ONLY_ORT_RUN, str(artifact)], tmp_path, env).stdout.splitlines()
    assert lines == ["(3, 10)", "[]"]
    summary = json.loads(_run([str(venv / "bin" / "fourierformer-deploy"), "run", str(artifact), "--json"],
                              tmp_path, env).stdout)
    assert summary["outputs"]["logits"]["shape"] == [2, 10]
    validate = subprocess.run([str(venv / "bin" / "fourierformer-deploy"), "validate", str(artifact)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
    assert validate.returncode == 2 and "Traceback" not in validate.stderr, validate.stderr
    assert validate.stderr.strip() == ("error: validate needs the Python package torch, which is not installed: "
                                       "pip install 'fourierformer-deploy[export]'")
