"""A stand-in for :class:`rl_vlm.distributed.group.ActorGroup` that starts no actor: it keeps
the constructor arguments of every actor, so tests can check what the pools hand their actors."""

from __future__ import annotations

from typing import Any


class ActorGroupRecorder:
    def __init__(self, actor_cls: type, bundles: Any, args_per_actor: Any, **_: Any) -> None:
        self.args = list(args_per_actor)
        self.actors: list[Any] = []

    def call(self, method: str, *args: Any) -> list[Any]:
        return [0]

    def call_each(self, method: str, args: Any) -> list[Any]:
        return [("127.0.0.1", 1)]
