"""Weight sync: the learners' parameters into every vLLM worker, as full HF-named tensors.

Two transports (``cluster.weight_sync``):

- ``object_store``: every learner rank puts its own ZeRO-3 partition of each bucket in Ray's
  object store (no all-gather; below stage 3 rank 0 puts the whole tensors); every engine
  ``ray.get``s all of them and concatenates the ranks' parts (:func:`assemble_parts`). CPU
  default; a restarted engine reloads the last buckets from there.
- ``collective``: a process group of learner rank 0 (group rank 0) and every vLLM worker
  (ranks 1..), made with its own TCPStore rendezvous so it never touches the learners'
  DeepSpeed group. The bucket plan (names, shapes, dtypes) is sent once when the group is made;
  each sync is then one broadcast per bucket of a flat byte buffer that the workers receive into
  a pre-allocated buffer. ``nccl`` on GPU, ``gloo`` on CPU.

This module imports only torch: the planning and packing are pure functions, tested without
Ray or vLLM; :class:`WeightGroup` is the transport both sides use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    import numpy as np


ALIGN = 16
"""Byte alignment of every tensor inside a packed bucket (so ``view(dtype)`` is legal)."""


STORE_PREFIX = "rl_vlm_weight_sync"


def resolve_weight_sync(mode: str, device: str, colocate: bool = False,
                        lora: bool = False) -> Literal["object_store", "collective"]:
    """``cluster.weight_sync`` for the resolved device: ``auto`` = collective on GPU with split
    pools and full weights; the object store on CPU, with colocated pools (NCCL refuses two
    members of one group on the same GPU) and for a LoRA adapter (a few MiB, put once: no
    group to keep); an explicit choice is kept (validation refuses the impossible ones)."""
    if mode == "auto":
        return "collective" if device == "gpu" and not colocate and not lora else "object_store"
    if mode == "object_store":
        return "object_store"
    if mode == "collective":
        return "collective"
    raise ValueError(f"unknown weight_sync {mode!r}")


def sync_backend(device: str) -> Literal["nccl", "gloo"]:
    return "nccl" if device == "gpu" else "gloo"


@dataclass(frozen=True)
class TensorSpec:
    """One parameter as the receivers pre-allocate it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def plan_buckets(specs: list[TensorSpec], bucket_bytes: int) -> list[list[TensorSpec]]:
    """Cut the parameters, in order, into buckets: a bucket closes as soon as it holds at least
    ``bucket_bytes`` (so a parameter larger than the limit gets a bucket of its own, and no
    bucket is empty). Both transports use this plan."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for s in specs:
        current.append(s)
        size += s.nbytes
        if size >= bucket_bytes:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def bucket_offsets(bucket: list[TensorSpec]) -> tuple[list[int], int]:
    """Byte offset of every tensor in the packed buffer (each aligned to :data:`ALIGN`) and the
    buffer's total size."""
    offsets, off = [], 0
    for s in bucket:
        offsets.append(off)
        off += (s.nbytes + ALIGN - 1) // ALIGN * ALIGN
    return offsets, off


def pack_bucket(bucket: list[TensorSpec], tensors: list[torch.Tensor],
                device: torch.device | str = "cpu") -> torch.Tensor:
    """[nbytes] uint8: the bucket's tensors laid out at :func:`bucket_offsets`."""
    offsets, total = bucket_offsets(bucket)
    buf = torch.zeros(total, dtype=torch.uint8, device=device)
    for s, off, t in zip(bucket, offsets, tensors, strict=True):
        if tuple(t.shape) != s.shape or t.dtype != s.dtype:
            raise ValueError(f"{s.name}: got {tuple(t.shape)} {t.dtype}, the plan says {s.shape} {s.dtype}")
        buf[off: off + s.nbytes].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    return buf


def unpack_bucket(bucket: list[TensorSpec], buf: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views into ``buf`` (a packed bucket), in plan order."""
    offsets, _ = bucket_offsets(bucket)
    return [(s.name, buf[off: off + s.nbytes].view(s.dtype).view(s.shape))
            for s, off in zip(bucket, offsets, strict=True)]


WeightPart = tuple[str, tuple[int, ...], str, "np.ndarray"]
"""One parameter as one learner rank puts it in the object store: (name, full shape, dtype name,
this rank's flat part). bfloat16 travels as its int16 bit pattern (numpy has no bfloat16);
numpy arrays are stored by Ray out of band and read in place by the engines, while pickled torch
tensors cost ~10x a memory copy each way (scripts/bench_sync.py)."""


def weight_part(name: str, shape: tuple[int, ...], part: torch.Tensor) -> WeightPart:
    """``part`` (this rank's flat ZeRO-3 partition, or the whole tensor) as a :data:`WeightPart`."""
    flat = part.detach().reshape(-1).cpu()
    dtype = str(flat.dtype).removeprefix("torch.")
    return name, tuple(shape), dtype, (flat.view(torch.int16) if flat.dtype == torch.bfloat16 else flat).numpy()


def assemble_parts(ranks: list[list[WeightPart]]) -> list[tuple[str, torch.Tensor]]:
    """One bucket's full tensors from every rank's parts of it (``ranks[r]`` = rank r's parts,
    the same names in the same order on every rank). ZeRO-3 gives rank r the elements
    ``[r * p, (r + 1) * p)`` of the flattened parameter, the last rank's part padded to ``p``; so
    the tensor is the ranks' parts concatenated in rank order, cut to the shape's size. Tensors
    may share memory with the (read-only) arrays: the engine's reload only reads them."""
    import warnings

    out = []
    for entries in zip(*ranks, strict=True):
        name, shape, dtype = entries[0][:3]
        if any(e[0] != name or tuple(e[1]) != tuple(shape) for e in entries):
            raise ValueError(f"learner ranks disagree on the bucket: {[e[0] for e in entries]}")
        with warnings.catch_warnings():  # arrays from the object store are read-only
            warnings.simplefilter("ignore", UserWarning)
            parts = [torch.from_numpy(e[3]) for e in entries]
        if dtype == "bfloat16":
            parts = [t.view(torch.bfloat16) for t in parts]
        numel = 1
        for d in shape:
            numel *= d
        flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        if flat.numel() < numel:
            raise ValueError(f"{name}: the ranks' parts hold {flat.numel()} elements, "
                             f"shape {tuple(shape)} needs {numel}")
        out.append((name, flat[:numel].view(tuple(shape))))
    return out
