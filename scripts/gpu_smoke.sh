#!/usr/bin/env bash
# Smoke test of the GPU path on one GPU (<= 8 minutes): the learner at Qwen2.5-VL-7B width
# (2 layers, bf16, ZeRO-3 on one rank when deepspeed is installed, gradient checkpointing) at
# T = 1k / 2k / 4k, optimizer start, checkpoint save/load, and the vLLM engine's reload and
# log-prob agreement when vllm is installed. What is missing is skipped and says why. Prints a
# table; exits non-zero if a check failed. Details: scripts/gpu_smoke.py, docs/cluster.md.
#   bash scripts/gpu_smoke.sh               # on a GPU machine
#   bash scripts/gpu_smoke.sh --dry-run     # CPU, toy sizes, seconds
#   PYTHON=/opt/venv/bin/python bash scripts/gpu_smoke.sh --lengths 2048 --micro-batch 1
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
# vLLM in-process (as in the rollout actors); no tokenizer thread pools in a short run.
export VLLM_ENABLE_V1_MULTIPROCESSING=${VLLM_ENABLE_V1_MULTIPROCESSING:-0} TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_smoke.py "$@"
