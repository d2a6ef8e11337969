"""Where an actor runs, for the pools' fault handling and the multinode placement checks, and
which CPUs its process may use (``cluster.rollout_cpu_affinity`` / ``learner_cpu_affinity``)."""

from __future__ import annotations

import os

from rl_vlm.errors import ConfigError


class ActorIdentity:
    """Mixed into every worker class: its process id and Ray node."""

    def pid(self) -> int:
        return os.getpid()

    @staticmethod
    def node_id() -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    @staticmethod
    def cpu_affinity() -> list[int]:
        """The logical CPUs this actor's process may run on (for tests and benchmarks)."""
        return sorted(os.sched_getaffinity(0))


def pin_to_cpus(cpus: tuple[int, ...], key: str) -> None:
    """Pin this process to the logical CPUs ``cpus``; nothing when empty. ``key``: the config key
    they came from, named in the error when one of them is not available here.

    Linux applies an affinity per thread, and a new thread inherits its creator's: every thread
    that exists now is pinned (Ray's own threads included), so every thread started after (the
    OpenMP pool of torch and vLLM) is too. Call it before the first parallel torch op."""
    if not cpus:
        return
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise ConfigError(f"{key}: CPU(s) {missing} are not available to this actor's process "
                          f"(it may run on {sorted(allowed)})")
    task_dir = "/proc/self/task"
    threads = [int(t) for t in os.listdir(task_dir)] if os.path.isdir(task_dir) else [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, set(cpus))
        except ProcessLookupError:  # the thread ended since the listing
            pass
