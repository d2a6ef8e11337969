"""Where an actor runs, for the pools' fault handling and the multinode placement checks."""

from __future__ import annotations

import os


class ActorIdentity:
    """Mixed into every worker class: its process id and Ray node."""

    def pid(self) -> int:
        return os.getpid()

    @staticmethod
    def node_id() -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()
