#!/usr/bin/env bash
# Create .venv (or $VENV) with fastddpm and everything its tests, demo and benchmarks use.
# torch is installed first and pinned (constraints.txt): a requirement that let pip choose a
# newer torch would pull several GB of CUDA wheels onto a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.fastddpm-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/constraints.txt ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install --quiet --upgrade pip
$pip install --quiet -c scripts/constraints.txt torch
$pip install --quiet -c scripts/constraints.txt -e ".[all]"
touch "$stamp"
