#!/usr/bin/env bash
# Create .venv (once) and install scalerec into it with the test tools.
# Where no torch is installed yet, install torch==2.13.0 first: on the project's machines that is a CPU build
# on local disk; elsewhere pip fetches it. Users with a GPU install their own CUDA torch (>=2.4) beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
