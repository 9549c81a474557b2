#!/usr/bin/env bash
# Set up a checkout for development: install it editable into .venv with every extra CI tests (torch first,
# pinned to the CPU build; TensorRT-RTX, which builds engines without a GPU), then build the plugin libraries
# (into the per-user cache). With a data-center GPU, also `pip install tensorrt`.
# Usage: bash scripts/setup.sh        (PYTHON: python3.11 if on PATH, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -c constraints.txt torch==2.13.0
pip install -c constraints.txt -e ".[export,onnxruntime-gpu,tensorrt-rtx,plot,test]"
.venv/bin/python -m export build-plugins
