"""Methods mixed into every vLLM worker (``worker_extension_cls``), reached with ``collective_rpc``."""

from __future__ import annotations

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
