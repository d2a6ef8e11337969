"""Weight sync through Ray's object store: each learner rank puts its own parameter partitions,
an engine reads and concatenates them (the default on CPU and in mixed clusters)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rl_vlm.distributed.interfaces import WeightRefs


def fetch_buckets(refs: WeightRefs) -> list[list[tuple[str, torch.Tensor]]]:
    """Inside an engine: every bucket of :meth:`LearnerGroup.publish_weights` as full tensors,
    read in place from the object store (the ranks' parts concatenated, one copy)."""
    import ray

    from rl_vlm.distributed.sync.plan import assemble_parts

    parts = iter(ray.get([r for bucket in refs for r in bucket]))
    return [assemble_parts([next(parts) for _ in bucket]) for bucket in refs]
