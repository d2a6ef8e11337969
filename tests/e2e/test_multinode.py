"""Multi-node on one host: a Ray head (1 CPU, custom resource ``node_a``) and a second Ray node
(2 CPUs, ``node_b``) started with ``ray start`` as two raylets, then the tiny GRPO job joins
them (``cluster.address=<head>``) with the rollout pool pinned to node_a and the learner pool
to node_b (``cluster.rollout_resources`` / ``learner_resources``). Checks that the job completes,
weights sync across the nodes every step, and the pools really ran on different nodes.

The sync runs through the collective (``cluster.weight_sync=collective``: learner rank 0 and
the vLLM workers in their own process group, gloo here, the nccl code path on GPU) with 1 MiB
buckets, so the ~0.6 M fp32 parameters span several: the multi-node case that path exists for.
Step 2's rollouts were sampled with the weights broadcast after step 1 (the entropy bonus
changes them), so the engine's log-probs must match the learner's. (The single-node object-store
sync is covered by tests/e2e/test_train_e2e.py.)

Only the processes this test starts are stopped (never ``ray stop``: it would stop every Ray
instance on the machine, other users' included)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rl_vlm.driver.tracking import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SYNC_TOL = 1e-3
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_ports() -> list[str]:
    """Every port a raylet would otherwise take at a fixed default (two raylets on one host, and
    other users' Ray instances, must not collide)."""
    p = _free_ports(6)
    return [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--dashboard-agent-listen-port={p[2]}",
            f"--dashboard-agent-grpc-port={p[3]}", f"--runtime-env-agent-port={p[4]}", f"--metrics-export-port={p[5]}"]


def _start(args: list[str], log: Path, attempts: int = 3) -> subprocess.Popen:
    """``ray start --block`` in its own process group (so the group can be killed at the end);
    returns once the node reports it started. Ray gives a new raylet a fixed 30 s to register
    (``raylet_start_wait_time_s`` in ray/_private/node.py); on a loaded 2-core box that can pass,
    and ``ray start`` then exits with "timed out during startup": that, and only that, is retried."""
    # Without the variable that start_ray's runtime_env sets, so the test sees that it arrived.
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    # Token auth on every member, stated: a new head turns it on by default but a joining
    # `ray start --address` does not, and was refused ("InvalidAuthToken") whenever no earlier
    # ray.init() in this process had exported RAY_AUTH_MODE=token. All use ~/.ray/auth_token,
    # which the head creates if missing.
    env["RAY_AUTH_MODE"] = "token"
    for attempt in range(attempts):
        with log.open("w") as out:
            proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                     "--object-store-memory=200000000", *_node_ports(), *args],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                _stop(proc)
                if "timed out during startup" in log.read_text() and attempt + 1 < attempts:
                    break
                raise RuntimeError(f"ray start failed:\n{log.read_text()}")
            time.sleep(1)
        else:
            return proc
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
    try:  # the group can outlive its leader (raylet, workers)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[str]:
    temp_dir = tempfile.mkdtemp(prefix="rlvlm_ray_", dir="/tmp")  # short: Ray's socket paths
    port, client_port = _free_ports(2)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(["--head", f"--port={port}", f"--ray-client-server-port={client_port}",
                             "--include-dashboard=false", f"--temp-dir={temp_dir}", "--num-cpus=1",
                             '--resources={"node_a": 1}'], tmp_path / "head.log"))
        procs.append(_start([f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"node_b": 2}'],
                            tmp_path / "node_b.log"))
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp_dir, ignore_errors=True)


# The driver runs in a fresh process: Ray fixes a process's auth mode when it first connects,
# and an earlier local ray.init() in the pytest process would decide it for this join.
DRIVER = """
import json, os, sys
import ray
from rl_vlm.driver import controller
from rl_vlm.compose import compose

placed = {}
real_build = controller.build_system

def build_and_locate(cfg, provider, with_learners=True):
    sys_ = real_build(cfg, provider, with_learners)
    placed["rollout"] = sys_.rollout.call("node_id")
    placed["learner"] = sys_.learners.node_ids()
    placed["resources"] = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    env_of = lambda actor: ray.get(actor.__ray_call__.remote(lambda _: os.environ.get("TOKENIZERS_PARALLELISM")))
    placed["env"] = [env_of(sys_.rollout.actors[0]), env_of(sys_.learners.actors[1])]
    return sys_

controller.build_system = build_and_locate
controller.train(compose(json.loads(sys.argv[1])))
with open(sys.argv[2], "w") as f:
    json.dump(placed, f)
"""


def test_pools_on_two_nodes(two_node_cluster: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path / "evqa", max_train=32, max_test=8)
    run_dir = tmp_path / "run"
    overrides = [
        f"model.path={tiny_model_dir}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
        "data.rollout_batch_size=4", "data.val_size=8", "rollout.n=4", "rollout.max_new_tokens=32",
        "learner.num_ranks=2", "learner.mini_batch_size=2", "learner.micro_batch_size=2", "learner.lr=1e-3",
        "trainer.total_steps=2", "trainer.val_every=0", "trainer.val_before_train=false",
        f"trainer.output_dir={run_dir}", "trainer.progress_bar=false",
        # Random weights earn no reward; the entropy bonus still moves the weights every step,
        # so step 2's rollouts (and their match with the learner) depend on the sync.
        "algorithm.entropy_coef=0.1",
        f"cluster.address={two_node_cluster}",
        "+cluster.rollout_resources.node_a=1", "+cluster.learner_resources.node_b=1",
        "cluster.weight_sync=collective", "cluster.weight_sync_bucket_mb=1",
    ]
    out = tmp_path / "placed.json"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # joins like the second raylet (see _start)
    env.pop("TOKENIZERS_PARALLELISM", None)  # start_ray's runtime_env must bring it to the actors
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(overrides), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    placed = json.loads(out.read_text())

    (rollout_node,) = placed["rollout"]
    assert "node_a" in placed["resources"][rollout_node]
    assert len(set(placed["learner"])) == 1 and "node_b" in placed["resources"][placed["learner"][0]]
    assert rollout_node not in placed["learner"]
    # start_ray's runtime_env (ACTOR_ENV) reached the actors of a cluster it joined.
    assert placed["env"] == ["false", "false"]
    by_step = {r["step"]: r for r in read_metrics(str(run_dir)) if "sync/version_min" in r}
    assert sorted(by_step) == [1, 2]
    for s in (1, 2):
        assert by_step[s]["sync/version_min"] == s
        assert by_step[s]["actor/grad_norm"] > 0
    assert by_step[2]["rollout/logprob_max_diff"] < SYNC_TOL, by_step[2]["rollout/logprob_max_diff"]
    print("cross-node collective sync_s per step:", [round(by_step[s]["time/sync_s"], 3) for s in (1, 2)])
