"""One generic Ray actor group: N actors of one class, actor i pinned to bundle i of the group's
own placement group, driven by fan-out calls whose results come back in actor order.

Both pools are such a group (in the spirit of OpenRLHF's ``RayActorGroup``); what differs
between them is only what a dead actor means, so that is one parameter, the
:data:`FailurePolicy`:

* :class:`Fail`: the call raises :class:`WorkerFailure`, which the driver answers by restarting
  the whole system from the newest checkpoint. For actors that are in a collective together
  (learner ranks, a weight-sync group): the survivors would hang in the next collective, and a
  newcomer cannot join a process group that already exists.
* :class:`Restart`: the dead actor is killed for good, started again in its bundle with its
  constructor arguments, re-initialised by the caller's hook (a rollout engine loads the current
  weights) and its share of the call is retried, up to ``max_retries`` times per call. For
  independent actors whose work can simply be redone (rollout engines).

Only a dead *actor* (``RayActorError``) is handled; an exception raised by the method itself is
a bug and propagates unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rl_vlm.distributed.interfaces import ObjectRef
from rl_vlm.distributed.runtime import bundle_strategy, create_placement_group

log = logging.getLogger("rl_vlm.distributed")


ActorHandle = Any
"""A Ray actor handle; untyped like :data:`ObjectRef` (its methods are looked up by name)."""


MAX_RETRIES = 3
"""Default restarts of one actor within one call before :class:`Restart` gives up."""


class WorkerFailure(RuntimeError):
    """An actor died and the system cannot continue without it: the driver restarts the system
    from the newest checkpoint."""


@dataclass(frozen=True)
class Fail:
    """A dead actor fails the call with :class:`WorkerFailure`."""


@dataclass(frozen=True)
class Restart:
    """A dead actor is restarted in its bundle and its share of the call retried."""

    reinit: Callable[[int, ActorHandle], None] | None = None
    """Called with the actor's index and its new handle once it is started, before the retry:
    bring it to the state its peers are in (e.g. load the current weights)."""
    max_retries: int = MAX_RETRIES
    """Retry rounds per call: an actor still dying after ``max_retries`` restarts within one
    call is a :class:`WorkerFailure`."""


FailurePolicy = Fail | Restart


def wait_or_fail(futures: Sequence[ObjectRef], what: str) -> list[Any]:
    """``ray.get(futures)``, turning a dead actor into :class:`WorkerFailure` (``what`` names
    the kind of actor in the message, e.g. ``learner rank``)."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(list(futures))
    except RayActorError as e:
        raise WorkerFailure(f"a {what} died: {e}") from e


class ActorGroup:
    """``len(bundles)`` actors of ``actor_cls``; actor i is ``actor_cls(*args_per_actor[i])`` in
    bundle i of a new placement group ``name`` (PACK strategy).

    The constructors are submitted in index order (actor 0, e.g. the rank that hosts a
    rendezvous, first) and not awaited: an actor's first method call waits for its constructor.
    ``what`` names one actor in logs and errors (``rollout engine``, ``learner rank``).
    ``policy`` may be replaced later (the rollout pool switches to :class:`Fail` once its
    engines are in a weight-sync group). ``pg``: an existing placement group with these bundles
    (colocated pools: two groups share one) instead of a new one; ``share``: the fraction of
    each bundle's CPUs and GPUs one actor asks for (0.5 when two actors share a bundle)."""

    def __init__(self, actor_cls: type, bundles: Sequence[Mapping[str, float]],
                 args_per_actor: Sequence[tuple[Any, ...]], *, name: str, what: str,
                 policy: FailurePolicy, pg: Any = None, share: float = 1.0) -> None:
        import ray

        if len(args_per_actor) != len(bundles):
            raise ValueError(f"{name}: {len(bundles)} bundles but {len(args_per_actor)} argument tuples")
        self.name, self.what, self.policy = name, what, policy
        self._bundles = [dict(b) for b in bundles]
        self._args = [tuple(a) for a in args_per_actor]
        self._own_pg = pg is None
        self.pg = pg if pg is not None else create_placement_group(self._bundles, name)
        self._share = share
        self._actor_cls: Any = ray.remote(actor_cls)  # Ray's ActorClass, untyped like its handles
        self.actors: list[ActorHandle] = [self._start(i) for i in range(len(self._bundles))]
        self.restarts = 0
        """Actors restarted by :class:`Restart` since the group started."""

    def restart_with(self, args_per_actor: Sequence[tuple[Any, ...]]) -> None:
        """What an actor restarted from now on is constructed with (a group re-pointed at
        another run): the running actors are left as they are."""
        if len(args_per_actor) != len(self._bundles):
            raise ValueError(f"{self.name}: {len(self._bundles)} bundles but {len(args_per_actor)} argument tuples")
        self._args = [tuple(a) for a in args_per_actor]

    def __len__(self) -> int:
        return len(self.actors)

    def stop(self) -> None:
        """Kill every actor (dead or alive) and free the placement group this group created; the
        group is unusable afterwards."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self._own_pg:
            remove_placement_group(self.pg)

    def _start(self, i: int) -> ActorHandle:
        b = self._bundles[i]
        return self._actor_cls.options(num_cpus=b.get("CPU", 1) * self._share, num_gpus=b.get("GPU", 0) * self._share,
                                       scheduling_strategy=bundle_strategy(self.pg, i)).remote(*self._args[i])

    def call(self, method: str, *args: Any) -> list[Any]:
        """``actor.method(*args)`` on every actor; results in actor order."""
        return self.call_each(method, [args] * len(self.actors))

    def call_each(self, method: str,
                  args_per_actor: Sequence[tuple[Any, ...]] | Mapping[int, tuple[Any, ...]]) -> list[Any]:
        """``actors[i].method(*args_per_actor[i])``: a sequence gives one tuple per actor, a
        mapping ``{index: args}`` calls only the actors it names. Results in actor order (of the
        actors called); a dead actor is handled by :attr:`policy`."""
        if isinstance(args_per_actor, Mapping):
            pending = {i: tuple(args_per_actor[i]) for i in sorted(args_per_actor)}
        else:
            if len(args_per_actor) != len(self.actors):
                raise ValueError(f"{self.name}.{method}: {len(self.actors)} actors but "
                                 f"{len(args_per_actor)} argument tuples")
            pending = {i: tuple(a) for i, a in enumerate(args_per_actor)}
        policy = self.policy
        if isinstance(policy, Fail):
            return self.wait([getattr(self.actors[i], method).remote(*a) for i, a in pending.items()])
        return self._call_restarting(method, pending, policy)

    def submit(self, method: str, *args: Any) -> list[ObjectRef]:
        """Start ``actor.method(*args)`` on every actor without waiting (a collective the caller
        joins from elsewhere); wait with :meth:`wait`. No retry whatever the policy: a share of
        a collective cannot be redone alone."""
        return [getattr(a, method).remote(*args) for a in self.actors]

    def wait(self, futures: Sequence[ObjectRef]) -> list[Any]:
        """``ray.get`` futures of this group's actors; a dead actor is a :class:`WorkerFailure`."""
        return wait_or_fail(futures, self.what)

    def _call_restarting(self, method: str, pending: dict[int, tuple[Any, ...]], policy: Restart) -> list[Any]:
        import ray
        from ray.exceptions import RayActorError

        results: dict[int, Any] = {}
        for _ in range(policy.max_retries + 1):
            futures = {i: getattr(self.actors[i], method).remote(*a) for i, a in pending.items()}
            failed = []
            # One by one, so the survivors' results are kept and only the dead actors' shares redone.
            for i, f in futures.items():
                try:
                    results[i] = ray.get(f)
                except RayActorError:
                    failed.append(i)
            if not failed:
                return [results[i] for i in sorted(results)]
            for i in failed:
                self._restart(i, policy)
            pending = {i: pending[i] for i in failed}
        raise WorkerFailure(f"{self.what}s {sorted(pending)} kept dying after {policy.max_retries} restarts")

    def _restart(self, i: int, policy: Restart) -> None:
        import ray

        log.warning("%s %d died; restarting it in its bundle", self.what, i)
        # The old actor is replaced below, so Ray must not revive it beside the new one.
        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._start(i)
        self.restarts += 1
        if policy.reinit is not None:
            policy.reinit(i, self.actors[i])
