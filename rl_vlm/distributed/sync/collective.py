"""Weight sync through a collective group (NCCL on GPU, gloo on CPU): learner rank 0 broadcasts
one bucket at a time to every vLLM worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rl_vlm.distributed.interfaces import ObjectRef
    from rl_vlm.distributed.pools import LearnerGroup, RolloutGroup


@dataclass(frozen=True)
class CollectiveSync:
    """A collective weight sync in flight: the learner ranks' ``broadcast_weights`` futures."""

    futures: list[ObjectRef]


def engine_ranks(num_engines: int, tp: int) -> list[list[int]]:
    """Group ranks of every engine's vLLM workers: engine i's worker j is ``1 + i * tp + j``."""
    return [[1 + i * tp + j for j in range(tp)] for i in range(num_engines)]


def connect_weight_sync(rollout: RolloutGroup, learners: LearnerGroup, device: str) -> str:
    """Build the weight-sync group if ``cluster.weight_sync`` resolves to ``collective``: learner
    rank 0 is group rank 0 (it hosts the rendezvous store), engine i's vLLM worker j is rank
    ``1 + i * tensor_parallel_size + j`` (every TP worker receives the full tensors; vLLM's
    loaders shard them). Joining ends with a one-element broadcast
    (:class:`~rl_vlm.distributed.sync.group.WeightGroup`), so a wrong address or rank fails here
    rather than at the first sync. Returns the resolved mode."""
    import ray

    from rl_vlm.distributed.sync.plan import resolve_weight_sync, sync_backend

    cfg = learners.cfg
    mode = resolve_weight_sync(cfg.cluster.weight_sync, device, cfg.cluster.colocate,
                               bool(cfg.model.lora.rank))
    if mode != "collective":
        return mode
    tp, backend = cfg.rollout.tensor_parallel_size if device == "gpu" else 1, sync_backend(device)
    world = 1 + len(rollout.actors) * tp
    bucket_bytes = cfg.cluster.weight_sync_bucket_mb << 20
    host, port = ray.get(learners.actors[0].free_address.remote())
    plan = ray.get(learners.actors[0].weight_plan.remote(bucket_bytes))
    # Every member blocks in the rendezvous until all have joined: start them all, then wait.
    joins = [a.join_weight_group.remote(host, port, world, backend, bucket_bytes) for a in learners.actors]
    engines = [a.join_weight_group.remote(host, port, 1 + i * tp, world, backend, plan)
               for i, a in enumerate(rollout.actors)]
    learners.group.wait(joins)
    joined = ray.get(engines)
    expected = engine_ranks(len(rollout.actors), tp)
    if [sorted(r) for r in joined] != expected:
        raise RuntimeError(f"weight-sync group: the engines' workers joined as ranks {joined}, expected {expected} "
                           f"(rollout.tensor_parallel_size={tp}: every TP worker must join)")
    rollout.collective = learners.collective = True
    return mode
