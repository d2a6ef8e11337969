#!/usr/bin/env bash
# Submit a training run to a running Ray cluster as a Ray job. This checkout (code + configs/) is
# shipped as the job's working directory, so the driver and every actor run exactly these files:
#   RAY_ADDRESS=http://HEAD_IP:8265 launch/submit.sh experiment=grpo_qwen2_5_vl_7b \
#       cluster=ray_cluster cluster.num_nodes=2 trainer.output_dir=/shared/runs/7b-a
# Extra `ray job submit` options go in SUBMIT_ARGS (e.g. SUBMIT_ARGS="--no-wait").
# trainer.output_dir must be on storage the head node keeps: the working dir is a temporary copy.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
read -r -a submit_args <<< "${SUBMIT_ARGS:-}"
excludes='{"excludes": [".git", ".venv", "artifacts", "runs", "multirun", "outputs", "wandb", "*.safetensors"]}'
exec "${RAY:-ray}" job submit --working-dir . --runtime-env-json "$excludes" "${submit_args[@]}" \
  -- python -m rl_vlm.cli train cluster.address=auto "$@"
