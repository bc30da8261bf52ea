#!/usr/bin/env bash
# Create .venv (once) and install scalerec into it with the test tools. Safe to run again.
# Where .venv has no torch yet, install torch==2.13.0 first; a torch already there is kept.
# For a GPU, install your CUDA build of torch (>=2.4) into .venv beforehand.
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
.venv/bin/python -c '
import sys, torch, scalerec
cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
build = f"CUDA {cuda}" if cuda else f"ROCm {hip}" if hip else "CPU"
print(f"Installed: torch {torch.__version__} ({build} build), scalerec {scalerec.__version__}, in {sys.prefix}")
'
echo "Next: .venv/bin/scalerec train          # fetch MovieLens-100K, train NeuMF on it"
echo "  or: .venv/bin/python -m pytest -q -n auto   # run the tests, one worker per core"
