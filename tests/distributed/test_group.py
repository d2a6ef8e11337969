"""The generic actor group (rl_vlm.distributed.group) on a private local Ray instance with a
trivial actor: results in actor order, per-actor arguments, and both failure policies with a
really killed actor."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rl_vlm.distributed.group import ActorGroup, Fail, Restart, WorkerFailure

BUNDLES = [{"CPU": 0.5}, {"CPU": 0.5}]


def _echo_cls() -> type:
    # Defined in a function so Ray ships the class by value (this test module is not importable
    # by name in the actor processes).
    class Echo:
        def __init__(self, index: int, offset: int) -> None:
            self.index, self.offset, self.loaded = index, offset, None

        def add(self, x: int) -> int:
            return self.index * self.offset + x

        def pid(self) -> int:
            return os.getpid()

        def load(self, value: str) -> None:
            self.loaded = value

        def loaded_value(self) -> str | None:
            return self.loaded

        def die(self) -> None:
            os._exit(1)

    return Echo


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    import ray

    from rl_vlm.distributed.provider import close_shared_pools

    close_shared_pools()  # their actors would hold this instance's 2 CPUs
    if ray.is_initialized():  # someone else's instance: use it, leave it running
        yield ray
        return
    # ray.init replaces these; later tests of the stop handler expect the defaults back.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()
        for s, h in handlers.items():
            signal.signal(s, h)


def _group(ray: Any, policy: Any, name: str) -> ActorGroup:
    return ActorGroup(_echo_cls(), BUNDLES, [(0, 10), (1, 10)], name=name, what="echo", policy=policy)


def _crash(ray: Any, actor: Any) -> None:
    """Kill the actor's process and return once Ray knows it is dead (``ray.kill`` only asks,
    so a call right after it may still be served)."""
    from ray.exceptions import RayActorError

    with pytest.raises(RayActorError):
        ray.get(actor.die.remote())


def test_fan_out_calls_in_actor_order_and_fail_policy(ray_local: Any) -> None:
    ray = ray_local
    g = _group(ray, Fail(), "test_fail")
    try:
        assert len(g) == 2
        assert g.call("add", 1) == [1, 11]
        assert g.call_each("add", [(1,), (2,)]) == [1, 12]
        assert g.call_each("add", {1: (5,)}) == [15]  # only the actors named
        with pytest.raises(ValueError, match="2 actors but 1 argument"):
            g.call_each("add", [(1,)])
        assert g.wait(g.submit("add", 3)) == [3, 13]
        _crash(ray, g.actors[1])
        with pytest.raises(WorkerFailure, match="an? echo died"):
            g.call("add", 0)
        assert g.restarts == 0
    finally:
        actors = list(g.actors)
        g.stop()
    # stop(): every actor killed, the dead one included, and the group's bundles given back.
    from ray.exceptions import RayActorError
    from ray.util import placement_group_table

    for a in actors:
        with pytest.raises(RayActorError):
            ray.get(a.pid.remote())
    deadline = time.time() + 30
    while placement_group_table(g.pg)["state"] != "REMOVED":
        assert time.time() < deadline, placement_group_table(g.pg)
        time.sleep(0.1)


def test_restart_policy_restarts_the_dead_actor_reinitialises_and_retries(ray_local: Any) -> None:
    ray = ray_local
    reinit: list[int] = []

    def catch_up(i: int, actor: Any) -> None:
        reinit.append(i)
        ray.get(actor.load.remote("current"))

    g = _group(ray, Restart(reinit=catch_up), "test_restart")
    try:
        pids = g.call("pid")
        _crash(ray, g.actors[1])
        assert g.call_each("add", [(1,), (2,)]) == [1, 12]  # actor 1's share redone on the new actor
        assert reinit == [1] and g.restarts == 1
        new_pids = g.call("pid")
        assert new_pids[0] == pids[0] and new_pids[1] != pids[1]
        assert g.call("loaded_value") == [None, "current"]
    finally:
        g.stop()


def test_restart_policy_gives_up_after_max_retries(ray_local: Any) -> None:
    ray = ray_local

    def dies_again(i: int, actor: Any) -> None:
        _crash(ray, actor)

    g = _group(ray, Restart(reinit=dies_again, max_retries=1), "test_give_up")
    try:
        _crash(ray, g.actors[0])
        with pytest.raises(WorkerFailure, match=r"echos \[0\] kept dying after 1 restarts"):
            g.call("add", 0)
        assert g.restarts == 2
    finally:
        g.stop()
