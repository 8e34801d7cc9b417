#!/usr/bin/env bash
# Install spmctl into the active Python environment, with a torch build that fits this machine.
#
#   bash install.sh          # spmctl
#   bash install.sh test     # spmctl + test tools (pytest, ruff)
#
# torch: an installed torch is kept. Otherwise tools/choose_torch.py asks pip (a dry-run report)
# what it would install: with an NVIDIA GPU the newest CUDA build; on a CPU-only machine the
# newest build that pulls no CUDA packages, from the configured indexes or else from
# $SPMCTL_TORCH_INDEX (default https://download.pytorch.org/whl/cpu) instead of PyPI's
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3
extras=""
[ $# -gt 0 ] && extras="[$1]"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: choosing a torch build for this machine (asking pip, up to a minute)" >&2
  torch_args=$("$PY" tools/choose_torch.py)
  mapfile -t torch_args <<<"$torch_args"
  "$PY" -m pip install "${torch_args[@]}"
fi
# setuptools>=77 reads pyproject's SPDX `license` string, also in builds without isolation (the tests
# pip-install their example plugins so; SPMCTL_BUILD_EXT=1 builds spmctl so)
"$PY" -m pip install "setuptools>=77" -e ".$extras"
# Build the fused membrane kernel now (about a minute, more with CUDA; progress on stderr), so the first
# run starts at once. Without a compiler spmctl still works, on its slower PyTorch reference.
if [ "${SPMCTL_KERNEL:-auto}" != reference ]; then
  "$PY" -m spmctl doctor --build || echo "install.sh: the fused kernel did not build; spmctl will use" \
    "its PyTorch reference (slower). \`spmctl doctor\` says why." >&2
fi
