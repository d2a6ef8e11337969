"""The LoRA weight sync's packing (rl_vlm.distributed.sync.adapter): what one flat all-gather of
every rank's ZeRO-3 partitions turns back into, and the array the object store carries."""

from __future__ import annotations

import pytest
import torch

from rl_vlm.distributed.sync.adapter import from_partitions, pack_adapter


@pytest.mark.parametrize("world", [1, 2, 3])
def test_adapter_tensors_are_cut_from_the_ranks_flat_partitions(world: int) -> None:
    """The one flat all-gather of a LoRA sync: rank r's ZeRO-3 partitions of every tensor end to
    end; the full tensors come back exactly, padding dropped."""
    tensors = [torch.randn(3, 5), torch.randn(7), torch.randn(2, 2, 2)]
    sizes = [-(-t.numel() // world) for t in tensors]  # ceil: ZeRO-3's partition size
    rows = []
    for r in range(world):
        row = []
        for t, p in zip(tensors, sizes, strict=True):
            flat = torch.cat([t.reshape(-1), torch.zeros(p * world - t.numel())])
            row.append(flat[r * p: (r + 1) * p])
        rows.append(torch.cat(row))
    got = from_partitions(torch.stack(rows), sizes, [tuple(t.shape) for t in tensors])
    assert all(torch.equal(g, t) for g, t in zip(got, tensors, strict=True))
    with pytest.raises(ValueError):
        from_partitions(torch.stack(rows), sizes[:2], [tuple(t.shape) for t in tensors[:2]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_adapter_round_trips_through_numpy(dtype: torch.dtype) -> None:
    tensors = {"a.lora_A.weight": torch.randn(4, 6).to(dtype), "a.lora_B.weight": torch.randn(6, 4).to(dtype)}
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])[None]
    packed = pack_adapter(list(tensors), [t.numel() for t in tensors.values()],
                          [tuple(t.shape) for t in tensors.values()], flat)
    assert packed.rows.dtype.kind in "fi"  # a plain numpy array: stored without pickling
    got = packed.tensors()
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
