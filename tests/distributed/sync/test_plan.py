"""Weight-sync selection, bucket planning and packing (pure functions), and the collective
transport itself with gloo: rank 0 and two receivers as threads of this process."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from rl_vlm.distributed.sync.group import WeightGroup
from rl_vlm.distributed.sync.plan import (
    ALIGN,
    TensorSpec,
    assemble_parts,
    bucket_offsets,
    pack_bucket,
    plan_buckets,
    resolve_weight_sync,
    sync_backend,
    unpack_bucket,
    weight_part,
)


def test_auto_is_collective_on_gpu_and_object_store_on_cpu() -> None:
    assert resolve_weight_sync("auto", "gpu") == "collective"
    assert resolve_weight_sync("auto", "cpu") == "object_store"
    assert resolve_weight_sync("collective", "cpu") == "collective"
    assert resolve_weight_sync("object_store", "gpu") == "object_store"
    assert (sync_backend("gpu"), sync_backend("cpu")) == ("nccl", "gloo")
    with pytest.raises(ValueError):
        resolve_weight_sync("nccl", "gpu")
    # Colocated on one GPU (NCCL refuses two members there) and a LoRA adapter: the object store.
    assert resolve_weight_sync("auto", "gpu", colocate=True) == "object_store"
    assert resolve_weight_sync("auto", "gpu", lora=True) == "object_store"


def _spec(name: str, numel: int, dtype: torch.dtype = torch.float32) -> TensorSpec:
    return TensorSpec(name, (numel,), dtype)


def test_buckets_close_once_they_reach_the_limit() -> None:
    # fp32: 4 bytes per element; limit 40 bytes.
    specs = [_spec("a", 4), _spec("b", 4), _spec("c", 20), _spec("d", 1), _spec("e", 2)]
    plan = plan_buckets(specs, 40)
    assert [[s.name for s in b] for b in plan] == [["a", "b", "c"], ["d", "e"]]
    # A parameter larger than the limit gets a bucket of its own; order is kept; none is empty.
    plan = plan_buckets([_spec("big", 100), _spec("x", 1)], 40)
    assert [[s.name for s in b] for b in plan] == [["big"], ["x"]]
    assert plan_buckets([], 40) == []
    with pytest.raises(ValueError):
        plan_buckets(specs, 0)


def test_offsets_are_aligned_and_pack_roundtrips_mixed_dtypes() -> None:
    bucket = [TensorSpec("w", (3, 5), torch.float32), TensorSpec("h", (7,), torch.bfloat16),
              TensorSpec("i", (2,), torch.int64)]
    offsets, total = bucket_offsets(bucket)
    assert offsets == [0, 64, 80] and total == 96  # 60 -> 64, 14 -> 16, 16
    assert all(o % ALIGN == 0 for o in offsets)
    tensors = [torch.randn(3, 5), torch.randn(7).bfloat16(), torch.tensor([3, -4])]
    out = unpack_bucket(bucket, pack_bucket(bucket, tensors))
    assert [n for n, _ in out] == ["w", "h", "i"]
    for (_, got), want in zip(out, tensors, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    with pytest.raises(ValueError, match="plan says"):
        pack_bucket(bucket, [torch.randn(5, 3), tensors[1], tensors[2]])


def _zero3_parts(name: str, t: torch.Tensor, world: int) -> list:
    """What each of ``world`` ZeRO-3 ranks holds of ``t``: an equal slice of the flattened,
    zero-padded tensor (rank r: elements [r*p, (r+1)*p))."""
    p = -(-t.numel() // world)
    flat = torch.cat([t.reshape(-1), torch.zeros(world * p - t.numel(), dtype=t.dtype)])
    return [weight_part(name, tuple(t.shape), flat[r * p:(r + 1) * p]) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_partitions_reassemble_to_the_full_tensors(world: int) -> None:
    torch.manual_seed(0)
    full = {"w": torch.randn(7, 5), "b": torch.randn(3), "h": torch.randn(2, 3).to(torch.bfloat16), "s": torch.randn(())}
    per_rank: list[list] = [[] for _ in range(world)]
    for name, t in full.items():
        for r, part in enumerate(_zero3_parts(name, t, world)):
            per_rank[r].append(part)
    out = assemble_parts(per_rank)
    assert [n for n, _ in out] == list(full)
    for name, t in out:
        assert t.dtype == full[name].dtype and t.shape == full[name].shape
        assert torch.equal(t, full[name]), name


def test_parts_that_disagree_or_fall_short_are_refused() -> None:
    a = torch.arange(6.0)
    r0, r1 = _zero3_parts("a", a, 2)
    with pytest.raises(ValueError, match="disagree"):
        assemble_parts([[r0], [("b", *r1[1:])]])
    with pytest.raises(ValueError, match="a: the ranks' parts hold 3 elements"):
        assemble_parts([[r0]])


def test_gloo_group_broadcasts_every_bucket_to_every_receiver() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.manual_seed(0)
    named = [(f"p{i}", torch.randn(i + 1, 3)) for i in range(6)] + [("half", torch.randn(4).bfloat16())]
    plan = plan_buckets([TensorSpec(n, tuple(t.shape), t.dtype) for n, t in named], 64)
    assert len(plan) > 2
    by_name = dict(named)
    got: dict[int, list[list[tuple[str, torch.Tensor]]]] = {}

    def member(rank: int) -> None:
        g = WeightGroup("127.0.0.1", port, rank, 3, "gloo", timeout_s=60)
        for _ in range(2):  # the same group serves every sync
            if rank == 0:
                g.send_buckets(plan, ([by_name[s.name] for s in b] for b in plan))
            else:
                got[rank] = g.receive_buckets(plan)

    threads = [threading.Thread(target=member, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(got) == [1, 2]
    for buckets in got.values():
        flat = [(n, t) for b in buckets for n, t in b]
        assert [n for n, _ in flat] == [n for n, _ in named]
        assert all(torch.equal(t, by_name[n]) for n, t in flat)


def test_pool_resources_go_into_every_bundle_of_their_pool() -> None:
    from rl_vlm.compose import compose
    from rl_vlm.distributed.runtime import pool_layout

    cfg = compose(["learner.num_ranks=2", "+cluster.rollout_resources.node_a=1",
                   "+cluster.learner_resources.node_b=1", "cluster.weight_sync=collective",
                   "cluster.weight_sync_bucket_mb=8"])
    layout = pool_layout(cfg.cluster, cfg.rollout, cfg.learner, "cpu")
    assert layout.rollout_bundles == [{"CPU": 1.0, "node_a": 1}]
    assert layout.learner_bundles == [{"CPU": 1.0, "node_b": 1}] * 2
    assert (cfg.cluster.weight_sync, cfg.cluster.weight_sync_bucket_mb) == ("collective", 8)
    assert compose([]).cluster.weight_sync == "auto"  # CPU runs keep the object store

