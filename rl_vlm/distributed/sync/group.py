"""The process group of a collective weight sync: learner rank 0 and every vLLM worker,
rendezvoused through a TCPStore."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

import torch

from rl_vlm.distributed.sync.plan import (
    STORE_PREFIX,
    TensorSpec,
    bucket_offsets,
    pack_bucket,
    unpack_bucket,
)

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Backend as C10dBackend


class WeightGroup:
    """A process group of ``world_size`` members, outside ``torch.distributed``'s default group.

    Rank 0 (learner rank 0) hosts the TCPStore at ``host:port``; the others connect to it. Only
    the ProcessGroup object is used (no global state), so it coexists with the DeepSpeed group
    in the learner and with vLLM's own groups in the workers."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str,
                 timeout_s: float = 600.0) -> None:
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                   wait_for_workers=False)
        prefixed = dist.PrefixStore(STORE_PREFIX, self.store)
        self.pg: C10dBackend
        if backend == "gloo":
            self.pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
            self.device = torch.device("cpu")
        elif backend == "nccl":
            # torch's stubs list only the (store, rank, size, options) constructor; the binding also
            # takes a timeout there.
            self.pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, timeout)  # type: ignore[arg-type]
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            raise ValueError(f"unknown backend {backend!r}")
        self._warm_up()

    def _warm_up(self) -> None:
        """One-element broadcast when the group is made. NCCL connects lazily, at the first
        collective: without this a wrong rank, port or device shows as a hang (``timeout_s``) at
        the first weight sync, after a whole step, instead of failing at start-up. Rank 0 sends
        the world size, which every member checks against its own."""
        probe = torch.full((1,), self.world_size if self.rank == 0 else -1, dtype=torch.int64, device=self.device)
        self.broadcast(probe)
        if int(probe.item()) != self.world_size:
            raise RuntimeError(f"weight-sync group: rank {self.rank} expects {self.world_size} members, "
                               f"rank 0 has {int(probe.item())}")

    def broadcast(self, buf: torch.Tensor) -> None:
        """In place: rank 0's ``buf`` lands in every member's ``buf`` (same size and dtype)."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        # torch's stubs give c10d's Backend no broadcast(); the binding has it (as ProcessGroup's).
        self.pg.broadcast([buf], opts).wait()  # type: ignore[attr-defined]
        if buf.is_cuda:
            torch.cuda.current_stream().synchronize()

    def send_buckets(self, plan: list[list[TensorSpec]], tensors: Iterable[list[torch.Tensor]]) -> None:
        """Rank 0: broadcast each bucket (``tensors`` yields one list per bucket, in plan order)."""
        for bucket, ts in zip(plan, tensors, strict=True):
            self.broadcast(pack_bucket(bucket, ts, self.device))

    def receive_bucket(self, bucket: list[TensorSpec]) -> list[tuple[str, torch.Tensor]]:
        """Ranks > 0: the next bucket, as views into a freshly allocated buffer (freed once the
        views are dropped)."""
        buf = torch.empty(bucket_offsets(bucket)[1], dtype=torch.uint8, device=self.device)
        self.broadcast(buf)
        return unpack_bucket(bucket, buf)

    def receive_buckets(self, plan: list[list[TensorSpec]]) -> list[list[tuple[str, torch.Tensor]]]:
        """Ranks > 0: every bucket of ``plan`` at once (all buffers alive together)."""
        return [self.receive_bucket(bucket) for bucket in plan]
