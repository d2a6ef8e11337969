"""Methods mixed into every vLLM worker (``worker_extension_cls``), reached with ``collective_rpc``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class WeightUpdateExtension:
    """In-place weight reload inside a live engine.

    Loading tensors straight into ``model.load_weights`` breaks on CPU: some layers repack their
    weights after loading. The worker's ``reload_weights`` runs vLLM's layer-wise reload, which
    re-applies that post-processing. It expects the full checkpoint in one call (weights it does
    not see are reported as not loaded), so every bucket is chained into one iterator.
    """

    def rl_vlm_reload(self: Any, buckets: list[list[tuple[str, torch.Tensor]]]) -> int:
        weights = ((name, tensor) for bucket in buckets for name, tensor in bucket)
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        return sum(len(b) for b in buckets)

    def rl_vlm_join_group(self: Any, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          plan: list[list[Any]]) -> int:
        """Join the weight-sync group (:class:`rl_vlm.distributed.sync.group.WeightGroup`) as rank
        ``rank_offset`` + this worker's rank in its engine; keep the bucket plan for every sync."""
        from rl_vlm.distributed.sync.group import WeightGroup

        rank = rank_offset + int(getattr(self, "rank", 0))
        self.rl_vlm_group = WeightGroup(host, port, rank, world_size, backend)
        self.rl_vlm_plan = plan
        return rank

    def rl_vlm_receive(self: Any) -> int:
        """Receive the buckets learner rank 0 broadcasts, streamed into one reload call: bucket
        i+1 is received only when the reload has taken bucket i's tensors, so a sync holds one
        bucket (plus the layer vLLM's layer-wise reload is assembling) instead of a second copy
        of the weights. Returns the number of tensors loaded."""
        group, plan = self.rl_vlm_group, self.rl_vlm_plan

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in plan:
                yield from group.receive_bucket(bucket)

        weights = stream()
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        # Every member must take part in every broadcast: receive what the reload did not ask
        # for (vLLM's load_weights reads to the end; this is a guard), or rank 0 would wait on
        # this worker at the next sync.
        unread = sum(1 for _ in weights)
        if unread:
            raise RuntimeError(f"the weight reload left {unread} received tensors unread")
        return sum(len(b) for b in plan)
