#!/usr/bin/env bash
# Create .venv and install medvlkit with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: on machines with a local CPU wheel this takes it; elsewhere pip's default build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,serve,onnx,dicomweb]"
echo "medvlkit installed in .venv ($(.venv/bin/medvlkit --version 2>/dev/null || echo ok))"
