"""``cluster.rollout_cpu_affinity`` / ``learner_cpu_affinity`` reach the actors and pin them
(rl_vlm.distributed.workers.identity.pin_to_cpus), checked without Ray, vLLM or DeepSpeed: the
pools hand the keys to every engine and rank, each pins its process first thing in its
constructor, a shared system starts new actors for another pinning, and the pinning covers every
thread of the process and the threads it starts later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rl_vlm.compose import compose
from rl_vlm.config import AlgorithmConfig, ConfigError, LearnerConfig, ModelConfig, RolloutConfig
from rl_vlm.distributed import pools, provider
from rl_vlm.distributed.runtime import PoolLayout
from rl_vlm.distributed.workers import learner as learner_mod
from rl_vlm.distributed.workers import rollout as rollout_mod
from rl_vlm.distributed.workers.identity import pin_to_cpus
from tests.workers.fake_group import ActorGroupRecorder

REPO = Path(__file__).resolve().parents[2]
USABLE = sorted(os.sched_getaffinity(0))

# In a fresh interpreter: a thread that exists before the pinning and one started after it both
# end up on the pinned CPU, as every thread listed in /proc/self/task.
PIN_SCRIPT = """
import os, threading
from rl_vlm.distributed.workers.identity import pin_to_cpus
cpu = {cpu}
go, seen = threading.Event(), {{}}
early = threading.Thread(target=lambda: (go.wait(), seen.update(early=os.sched_getaffinity(0))))
early.start()
pin_to_cpus((cpu,), "cluster.learner_cpu_affinity")
late = threading.Thread(target=lambda: seen.update(late=os.sched_getaffinity(0)))
late.start(); late.join(); go.set(); early.join()
tasks = {{t: os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}}
assert seen == {{"early": {{cpu}}, "late": {{cpu}}}}, seen
assert all(m == {{cpu}} for m in tasks.values()), tasks
print("ok", len(tasks))
"""


def test_every_thread_is_pinned_and_new_threads_inherit_it() -> None:
    proc = subprocess.run([sys.executable, "-c", PIN_SCRIPT.format(cpu=USABLE[-1])], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr


def test_empty_pins_nothing_and_a_missing_cpu_names_the_key() -> None:
    before = os.sched_getaffinity(0)
    pin_to_cpus((), "cluster.rollout_cpu_affinity")
    absent = (os.cpu_count() or 1) + 3
    with pytest.raises(ConfigError, match=rf"cluster.rollout_cpu_affinity: CPU\(s\) \[{absent}\]"):
        pin_to_cpus((USABLE[0], absent), "cluster.rollout_cpu_affinity")
    assert os.sched_getaffinity(0) == before  # refused before anything was pinned


class _Pinned(Exception):
    pass


def _recorder(calls: list[tuple[tuple[int, ...], str]], stop: bool) -> Any:
    def pin(cpus: tuple[int, ...], key: str) -> None:
        calls.append((cpus, key))
        if stop:
            raise _Pinned

    return pin


def test_engine_pins_itself_before_vllm_and_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[int, ...], str]] = []
    monkeypatch.setattr(rollout_mod, "pin_to_cpus", _recorder(calls, stop=True))
    threads: list[int] = []
    monkeypatch.setattr(rollout_mod.torch, "set_num_threads", threads.append)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine's setdefault leaves the env as it was
    with pytest.raises(_Pinned):  # the first thing the engine does: nothing imported or threaded yet
        rollout_mod.RolloutEngine("m", RolloutConfig(), 0, "cpu", 64, (0,))
    assert calls == [((0,), "cluster.rollout_cpu_affinity")] and threads == []


@pytest.mark.parametrize("device,pinned", [("cpu", True), ("gpu", False)])
def test_learner_pins_itself_on_cpu_only(monkeypatch: pytest.MonkeyPatch, device: str, pinned: bool) -> None:
    calls: list[tuple[tuple[int, ...], str]] = []
    order: list[str] = []
    monkeypatch.setattr(learner_mod, "pin_to_cpus",
                        lambda cpus, key: (calls.append((cpus, key)), order.append("pin")))
    monkeypatch.setattr(learner_mod.torch, "set_num_threads", lambda n: order.append("threads"))
    learner_mod.Learner(0, 1, ModelConfig(), LearnerConfig(), AlgorithmConfig(), device, 1, (1,))
    assert calls == ([((1,), "cluster.learner_cpu_affinity")] if pinned else [])
    assert order == (["pin", "threads"] if pinned else ["threads"])


def test_pools_hand_every_actor_its_pool_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pools, "ActorGroup", ActorGroupRecorder)
    cfg = compose(["cluster.rollout_cpu_affinity=[0]", "cluster.learner_cpu_affinity=[1]"])
    layout = PoolLayout([{"CPU": 1.0}] * 2, [{"CPU": 1.0}] * 2, "gloo")
    rollout = pools.RolloutGroup(cfg, layout, "cpu")
    assert [a[5] for a in rollout.group.args] == [(0,), (0,)]  # type: ignore[attr-defined]
    learners = pools.LearnerGroup(cfg, layout, "cpu")
    assert [a[7] for a in learners.group.args] == [(1,), (1,)]  # type: ignore[attr-defined]


class _FakePool:
    max_model_len = 1 << 20

    def reconfigure(self, cfg: Any) -> None:
        pass

    def publish_weights(self) -> list[Any]:
        return []

    def load_weights(self, refs: Any, version: int) -> None:
        pass


def test_a_shared_system_restarts_its_actors_for_another_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The affinity is applied once, at actor start: re-pointed actors would keep the old one."""
    starts: list[Any] = []
    monkeypatch.setattr(provider, "_start", lambda cfg, **_: (starts.append(cfg), (_FakePool(), _FakePool()))[1])
    monkeypatch.setattr(provider, "_ray_running", lambda: True)
    monkeypatch.setattr(provider, "_shutdown_ray", lambda: None)
    shared = provider.SharedPools()
    base = ["cluster.device=cpu"]
    for overrides in ([], [], ["cluster.rollout_cpu_affinity=[0]"], ["cluster.rollout_cpu_affinity=[0]"],
                      ["cluster.rollout_cpu_affinity=[0]", "cluster.learner_cpu_affinity=[1]"]):
        shared.acquire(compose(base + overrides), with_learners=True)
    assert len(starts) == 3 and shared.reused == 2
    shared.close()
