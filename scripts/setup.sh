#!/usr/bin/env bash
# Install everything into .venv (torch first, pinned to the CPU build; TensorRT-RTX, which builds engines
# without a GPU) and build the plugin libraries. With a data-center GPU, also `pip install tensorrt`.
# Usage: bash scripts/setup.sh        (PYTHON: python3.11 if on PATH, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -c constraints.txt torch==2.13.0
pip install -c constraints.txt -e ".[test,tensorrt-rtx]"
.venv/bin/python -m export build-plugins
