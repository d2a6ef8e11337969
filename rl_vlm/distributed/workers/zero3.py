"""What the learner does to ZeRO-3 parameters outside DeepSpeed's optimizer: read or write this
rank's partition, and swap values into the partitions for one pass (GRPO-CARE's EMA adapter)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def partition(p: torch.nn.Parameter) -> torch.Tensor:
    """The part of ``p`` this rank holds: its ZeRO-3 partition, or the whole tensor below stage 3."""
    return p.ds_tensor.data if hasattr(p, "ds_tensor") else p.data


def refresh_persistent(params: list[torch.nn.Parameter]) -> None:
    """Re-gather the ZeRO-3 *persistent* parameters among ``params`` after their partitions were
    written outside the optimizer (collective: every rank must call). DeepSpeed keeps parameters
    below ``stage3_param_persistence_threshold`` gathered for good and re-gathers them only after
    its own optimizer step, so a forward would otherwise still read their old full tensors."""
    persistent = [p for p in params if getattr(p, "ds_persist", False)]
    if persistent:
        persistent[0].all_gather(persistent)  # type: ignore[attr-defined]


@contextlib.contextmanager
def swapped_partitions(params: list[torch.nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    """``values`` (this rank's partitions) in ``params`` for the block, the old ones back after it."""
    saved = [partition(p).clone() for p in params]
    for p, v in zip(params, values, strict=True):
        partition(p).copy_(v)
    refresh_persistent(params)
    try:
        yield
    finally:
        for p, v in zip(params, saved, strict=True):
            partition(p).copy_(v)
        refresh_persistent(params)
