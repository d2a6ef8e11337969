#!/usr/bin/env bash
# Start this node's Ray daemon for a multi-node rl-vlm run.
#   launch/ray_start.sh head                    # on the head node (GCS on $RAY_PORT, dashboard on 8265)
#   launch/ray_start.sh worker HEAD_IP          # on every other node
#   launch/ray_start.sh wait NUM_GPUS           # block until the cluster has NUM_GPUS GPUs (max 10 min)
# Env: RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), NUM_GPUS (default: nvidia-smi count),
#      RAY_BLOCK=1 keeps `ray start` in the foreground (what SLURM steps need), PYTHON, RAY.
set -euo pipefail
role=${1:?usage: ray_start.sh head | worker HEAD_IP | wait NUM_GPUS}
port=${RAY_PORT:-6379}
ray_bin=${RAY:-ray}
num_gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
extra=()
[ -n "${RAY_BLOCK:-}" ] && extra+=(--block)

case "$role" in
  head)
    exec "$ray_bin" start --head --port="$port" --num-gpus="$num_gpus" \
      --dashboard-host=0.0.0.0 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" "${extra[@]}" ;;
  worker)
    head=${2:?usage: ray_start.sh worker HEAD_IP}
    exec "$ray_bin" start --address="$head:$port" --num-gpus="$num_gpus" "${extra[@]}" ;;
  wait)
    want=${2:?usage: ray_start.sh wait NUM_GPUS}
    exec "${PYTHON:-python}" - "$want" <<'PY'
import sys, time
import ray
ray.init(address="auto", log_to_driver=False)
want, start = float(sys.argv[1]), time.time()
while (have := ray.cluster_resources().get("GPU", 0.0)) < want:
    if time.time() - start > 600:
        sys.exit(f"only {have:.0f} of {want:.0f} GPUs joined the Ray cluster within 10 min")
    time.sleep(5)
print(f"Ray cluster ready: {have:.0f} GPUs on {len([n for n in ray.nodes() if n['Alive']])} nodes")
PY
    ;;
  *) echo "unknown role '$role' (head | worker | wait)" >&2; exit 2 ;;
esac
