#!/usr/bin/env bash
# Set up the project-local virtual environment .venv/ (idempotent).
#   bash scripts/setup.sh              # the package and its core dependencies
#   bash scripts/setup.sh dev,alfworld # plus extras: dev (tests), alfworld (text ALFWorld, ~5 min compile)
# torch is installed first at 2.13.0: on the team's CPU machines pip takes that CPU wheel from local disk,
# while an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The machine's pip config lists local indexes that may be absent; drop its noise, keep real errors.
quiet() { "$@" 2>&1 | sed "/^WARNING: Location .file:/d"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    quiet "${pip[@]}" "torch==2.13.0"
fi
if [ -n "$extras" ]; then
    quiet "${pip[@]}" -e ".[$extras]"
else
    quiet "${pip[@]}" -e .
fi
echo "setup done: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
