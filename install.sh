#!/usr/bin/env bash
# Install spmctl into the active Python environment, with a torch build that fits this machine.
#
#   bash install.sh          # spmctl
#   bash install.sh test     # spmctl + test tools (pytest, ruff)
#
# torch: an installed torch is kept. On a machine with an NVIDIA GPU pip takes the newest
# CUDA build from PyPI. On a CPU-only machine it takes a CPU build instead of PyPI's
# multi-GB CUDA one: torch==$SPMCTL_TORCH_VERSION (default 2.13.0), from
# $SPMCTL_TORCH_INDEX when set (e.g. https://download.pytorch.org/whl/cpu for any newer
# CPU release), else from pip's configured indexes.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3
extras=""
[ $# -gt 0 ] && extras="[$1]"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install.sh: NVIDIA GPU found: installing the newest CUDA build of torch" >&2
    "$PY" -m pip install "torch>=2.4"
  else
    version=${SPMCTL_TORCH_VERSION:-2.13.0}
    echo "install.sh: no NVIDIA GPU: installing the CPU build of torch $version" >&2
    if [ -n "${SPMCTL_TORCH_INDEX:-}" ]; then
      "$PY" -m pip install "torch==$version" --index-url "$SPMCTL_TORCH_INDEX"
    else
      "$PY" -m pip install "torch==$version"
    fi
  fi
fi
# setuptools>=68 lets the tests pip-install their example plugins without build isolation
"$PY" -m pip install "setuptools>=68" -e ".$extras"
