#!/usr/bin/env bash
# Create .venv (or $VENV) with fastddpm and everything its tests, demo and benchmarks use.
#
# torch goes in first, pinned (scripts/constraints.txt), and as the right build for this machine:
#   - NVIDIA GPU (nvidia-smi lists one): torch==2.13.0 from PyPI, the CUDA build;
#   - no GPU on Linux/Windows: torch==2.13.0+cpu, from a local wheel (pip's find-links) when
#     there is one, otherwise from PyTorch's CPU index ($TORCH_CPU_INDEX). Plain `torch` here
#     would pull several GB of CUDA wheels onto a machine that cannot use them;
#   - macOS: torch==2.13.0 from PyPI (CPU/MPS only anyway).
# A torch 2.13.0 already in the venv (CPU or CUDA build) is kept. Then `-e .[all]` with the
# same constraints, so no extra can move torch.
# Overrides: VENV, PYTHON, TORCH_SPEC (e.g. "torch==2.13.0"), TORCH_CPU_INDEX, FASTDDPM_GPU=0|1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' scripts/constraints.txt)
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
stamp="$VENV/.fastddpm-installed"

if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] \
   && [ "$stamp" -nt scripts/constraints.txt ]; then
  exit 0
fi
say() { echo "bootstrap: $*" >&2; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV with $("$PYTHON" --version 2>&1)"; "$PYTHON" -m venv "$VENV"; }
py="$VENV/bin/python"
pip="$py -m pip"
# Editable installs of a pyproject-only package need pip >= 21.3; only upgrade an old pip.
$pip install --quiet "pip>=23"

have_gpu() {
  case "${FASTDDPM_GPU:-}" in 1) return 0 ;; 0) return 1 ;; esac
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

installed_torch=$($py -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ "${installed_torch%%+*}" = "$TORCH_VERSION" ]; then
  say "keeping torch $installed_torch"
elif [ -n "${TORCH_SPEC:-}" ]; then
  say "installing $TORCH_SPEC (TORCH_SPEC)"
  $pip install --quiet "$TORCH_SPEC"
elif have_gpu || [ "$(uname -s)" = Darwin ]; then
  say "installing torch==$TORCH_VERSION (GPU found: the CUDA build from PyPI)"
  $pip install --quiet "torch==$TORCH_VERSION"
else
  say "installing torch==$TORCH_VERSION+cpu (no GPU found)"
  if ! $pip install --quiet "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
    say "no local CPU wheel; using $TORCH_CPU_INDEX"
    $pip install --quiet --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple \
      "torch==$TORCH_VERSION+cpu"
  fi
fi

say "installing fastddpm[all] (editable)"
$pip install --quiet -c scripts/constraints.txt -e ".[all]"
$py -c 'import fastddpm, torch; print("bootstrap: fastddpm", fastddpm.__version__, "with torch", torch.__version__)' >&2
touch "$stamp"
