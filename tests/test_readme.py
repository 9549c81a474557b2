"""The README's set-up-and-run command, exactly as written, in a fresh clone of this repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m export build-engine"


def _set_up_and_run_command() -> str:
    section = (REPO / "README.md").read_text().split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return next(line.strip() for line in section.splitlines() if line.strip().startswith(FIRST_COMMAND))


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs git and a git checkout of this repository (to clone it)")
def test_readme_set_up_and_run_command_passes_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "FOURIERFORMER_BUILD_DIR")}
    result = subprocess.run(["bash", "-c", _set_up_and_run_command()], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "PASSED" in result.stdout


def _python_snippet() -> str:
    """The README's 'Use it from Python' example, dedented."""
    section = (REPO / "README.md").read_text().split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line[4:] for line in section.splitlines() if line.startswith("    ") or not line.strip()).strip()


def test_readme_python_example_runs_as_written(tmp_path, ort_library):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _python_snippet()], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(4, 10)"
    assert (tmp_path / "engines/built/tiny-vit-api/manifest.json").is_file()


def _fenced(section: str, language: str) -> str:
    """The ```language fenced block of a README section."""
    text = (REPO / "README.md").read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_readme_bring_your_own_model_runs_as_written(tmp_path, ort_library):
    """The Python example (export.compile), then the command lines on the file it kept, in a fresh folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _fenced("Bring your own model", "python")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "1"
    outputs = []
    for line in _fenced("Bring your own model", "sh").strip().splitlines():
        command = line.split()
        assert command[:3] == ["python", "-m", "export"], line
        done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert outputs[0].startswith("fused 1 of 1 candidate") and "PASSED" in outputs[-1]
