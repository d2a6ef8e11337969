"""Weight sync of a LoRA run (``model.lora.rank > 0``): only the adapter moves.

The learner ranks all-gather their ZeRO-3 partitions of every adapter tensor in ONE flat
collective (a per-tensor gather costs a round trip per tensor, most of a small adapter's sync),
and rank 0 puts the gathered array in Ray's object store once (:class:`PackedAdapter`); every
engine reads it, writes a PEFT adapter directory of its own (``adapter_model.safetensors`` +
``adapter_config.json``) and loads it as a new vLLM LoRA adapter, replacing the previous one.
The base weights never move, so a sync costs the adapter's bytes, whatever the transport
``cluster.weight_sync`` names for full weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch
    from peft import PeftConfig

    from rl_vlm.distributed.interfaces import ObjectRef


ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class PackedAdapter:
    """An adapter as one array: every rank's ZeRO-3 partitions of every adapter tensor, end to end
    (``rows[r]`` = rank r's; one row holding the full tensors below stage 3). One numpy array is
    stored and read by the object store without pickling; the engine cuts the tensors out
    (:meth:`tensors`), so neither side pays a per-tensor cost."""

    names: tuple[str, ...]
    """PEFT's saved names (``...q_proj.lora_A.weight``)."""
    sizes: tuple[int, ...]
    """Elements of each tensor in one row (its padded partition size)."""
    shapes: tuple[tuple[int, ...], ...]
    rows: np.ndarray
    """[ranks, sum(sizes)]; bfloat16 is stored as int16 (numpy has no bfloat16)."""
    dtype: str

    def tensors(self) -> dict[str, torch.Tensor]:
        import warnings

        import torch

        with warnings.catch_warnings():  # arrays from the object store are read-only; cloned below
            warnings.simplefilter("ignore", UserWarning)
            rows = torch.from_numpy(self.rows)
        if self.dtype == "bfloat16":
            rows = rows.view(torch.bfloat16)
        return dict(zip(self.names, from_partitions(rows, list(self.sizes), list(self.shapes)), strict=True))


def gather_adapter(names: list[str], shapes: list[tuple[int, ...]], parts: list[torch.Tensor], rank: int,
                   world: int) -> PackedAdapter | None:
    """On every learner rank (collective when ``world`` > 1): all-gather this rank's ``parts``
    (its ZeRO-3 partitions of the adapter tensors, or the whole tensors with ``world`` 1) in one
    flat collective; rank 0 gets the :class:`PackedAdapter`, the others None."""
    import torch

    flat = torch.cat([t.detach().reshape(-1) for t in parts])
    if world > 1:
        import torch.distributed as dist

        gathered = torch.empty(world * flat.numel(), dtype=flat.dtype, device=flat.device)
        dist.all_gather_into_tensor(gathered, flat)  # rank-major: rank r's flat at [r * n, (r + 1) * n)
        flat = gathered
    if rank != 0:
        return None
    return pack_adapter(names, [t.numel() for t in parts], shapes, flat.view(world, -1))


def pack_adapter(names: list[str], sizes: list[int], shapes: list[tuple[int, ...]],
                 rows: torch.Tensor) -> PackedAdapter:
    import torch

    flat = rows.detach().cpu()
    dtype = str(flat.dtype).removeprefix("torch.")
    array = (flat.view(torch.int16) if flat.dtype == torch.bfloat16 else flat).numpy()
    return PackedAdapter(tuple(names), tuple(sizes), tuple(shapes), array, dtype)


@dataclass(frozen=True)
class AdapterWeights:
    """A published adapter: its tensors in the object store and its PEFT config."""

    tensors: ObjectRef
    """A :class:`PackedAdapter`."""
    config_json: str
    """``adapter_config.json`` as PEFT writes it (rank, alpha, target modules, base model)."""
    num_bytes: int
    """Bytes of the adapter tensors (what one sync moves to each engine)."""


def write_adapter(directory: str, tensors: dict[str, torch.Tensor], config_json: str) -> str:
    """Write a PEFT adapter directory that vLLM's ``LoRARequest`` loads by path; returns it."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    # The object store hands out read-only views; safetensors needs contiguous tensors.
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(directory, ADAPTER_WEIGHTS_FILE))
    with open(os.path.join(directory, ADAPTER_CONFIG_FILE), "w") as f:
        f.write(config_json)
    return directory


def adapter_config_json(peft_config: PeftConfig) -> str:
    """``adapter_config.json`` of a ``peft.LoraConfig``, exactly as its ``save_pretrained`` writes it."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        peft_config.save_pretrained(d)
        with open(os.path.join(d, ADAPTER_CONFIG_FILE)) as f:
            return f.read()


def from_partitions(rows: torch.Tensor, sizes: list[int], shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The full tensors from every rank's concatenated ZeRO-3 partitions: ``rows[r]`` is rank r's
    partitions of the tensors laid end to end, ``sizes[i]`` the (padded) partition size of tensor
    i on every rank. ZeRO-3 gives rank r the elements ``[r * p, (r + 1) * p)`` of the flattened
    tensor (the last rank's part zero-padded to p), so tensor i is its column block read in rank
    order, cut to its shape's size."""
    out, offset = [], 0
    for size, shape in zip(sizes, shapes, strict=True):
        out.append(rows[:, offset: offset + size].reshape(-1)[: math.prod(shape)].reshape(shape).clone())
        offset += size
    if offset != rows.shape[1]:
        raise ValueError(f"partitions of {offset} elements, but each rank sent {rows.shape[1]}")
    return out
