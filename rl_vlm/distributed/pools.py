"""The two actor pools the driver drives (they implement
:class:`rl_vlm.distributed.interfaces.RolloutPool` / :class:`~rl_vlm.distributed.interfaces.LearnerPool`):
the rollout pool (vLLM engines, dead ones restarted in place) and the learner pool (one
DeepSpeed ZeRO-3 group, a dead rank fails the step).

Each is an :class:`~rl_vlm.distributed.group.ActorGroup` plus what is specific to it: how a
step's prompts or sequences are split over the actors (the learner split is
:mod:`rl_vlm.distributed.sharding`) and how results are put back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rl_vlm import seeds
from rl_vlm.batch import LearnerBatch, Prompt, RolloutBatch, StepShape
from rl_vlm.config import Config
from rl_vlm.distributed.group import (
    ActorGroup,
    ActorHandle,
    Fail,
    Restart,
    WorkerFailure,
    wait_or_fail,
)
from rl_vlm.distributed.interfaces import LogprobModel, PublishedWeights, WeightRefs
from rl_vlm.distributed.runtime import PoolLayout
from rl_vlm.distributed.sharding import (
    StepSharding,
    gather,
    per_rank,
    rank_shards,
    sft_num_tokens,
    shard_step,
)
from rl_vlm.distributed.sync.adapter import AdapterWeights
from rl_vlm.distributed.sync.collective import CollectiveSync
from rl_vlm.distributed.workers.packing import packs
from rl_vlm.validation import engine_max_model_len, resolve_model

__all__ = ["LearnerGroup", "RolloutGroup", "WorkerFailure"]


def _sum_metrics(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Every rank's metrics summed, in rank order (the ranks return global-normalised shares)."""
    metrics: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            metrics[k] = metrics.get(k, 0.0) + v
    return metrics


class _Pool:
    """What both pools expose of their :class:`ActorGroup` (bench scripts and the multinode test
    reach the actors and the placement group)."""

    group: ActorGroup

    @property
    def actors(self) -> list[ActorHandle]:
        return self.group.actors

    @property
    def pg(self) -> Any:
        return self.group.pg


class RolloutGroup(_Pool):
    """``rollout.num_engines`` vLLM engines; a step's prompts are split across them evenly.

    An engine whose actor dies (process killed, node lost) is restarted in its bundle, loaded
    with the current weights (the last synced buckets stay in the object store for this) and
    its share of the work is retried (:class:`~rl_vlm.distributed.group.Restart`). Once the
    engines are in a weight-sync group (:attr:`collective`) a dead engine is a
    :class:`WorkerFailure` instead.
    """

    def __init__(self, cfg: Config, layout: PoolLayout, device: str, max_model_len: int | None = None,
                 pg: Any = None) -> None:
        """``max_model_len``: the engines' length limit (default: the run's own,
        :func:`~rl_vlm.validation.engine_max_model_len`; a shared system starts longer ones).
        ``pg``: the placement group shared with the learners (colocated pools); None = its own."""
        from rl_vlm.distributed.workers.rollout import RolloutEngine

        self.max_model_len = max_model_len or engine_max_model_len(cfg)
        self.cfg = cfg.rollout
        self.weight_version = 0
        self._refs: WeightRefs = []
        self._adapter: AdapterWeights | None = None
        """The last adapter loaded (LoRA), for a restarted engine to catch up."""
        self._collective = False
        self._restart_policy = Restart(reinit=self._catch_up)
        self._asleep = False
        self._device, self._colocate = device, layout.colocate
        args = self._engine_args(cfg, len(layout.rollout_bundles))
        self.group = ActorGroup(RolloutEngine, layout.rollout_bundles, args, name="rl_vlm_rollout",
                                what="rollout engine", policy=self._restart_policy, pg=pg,
                                share=layout.share)

    def reconfigure(self, cfg: Config) -> None:
        """Re-point the engines at another run whose engine settings are the same (the caller
        checks): they keep their processes and vLLM state, and hold the previous run's weights
        until the caller loads the new run's (:meth:`load_weights`, version 0). An engine restarted
        during the run is constructed from the run's config (its ``model.path`` included)."""
        self.group.restart_with(self._engine_args(cfg, len(self.group)))
        self.cfg = cfg.rollout
        self.weight_version = 0
        self._refs = []
        self._adapter = None
        self.group.restarts = 0  # ``rollout/restarts`` counts this run's

    def _engine_args(self, cfg: Config, n: int) -> list[tuple[Any, ...]]:
        """:class:`RolloutEngine`'s constructor arguments for engine 0..n-1 of ``cfg``'s run."""
        return [(cfg.model.path, cfg.rollout, seeds.engine(cfg.trainer.seed, i), self._device, self.max_model_len,
                 cfg.cluster.rollout_cpu_affinity, cfg.model.lora, self._colocate) for i in range(n)]

    @property
    def restarts(self) -> int:
        return self.group.restarts

    @property
    def collective(self) -> bool:
        """Weights arrive through the weight-sync group (:func:`connect_weight_sync`)."""
        return self._collective

    @collective.setter
    def collective(self, on: bool) -> None:
        # A restarted engine cannot join a process group that already exists, and the group's
        # next broadcast would hang without it: the run must restart from a checkpoint.
        self._collective = on
        self.group.policy = Fail() if on else self._restart_policy

    def _catch_up(self, i: int, actor: ActorHandle) -> None:
        """A restarted engine loads the weights its peers hold (the last published buckets)."""
        import ray

        if self._adapter is not None:
            ray.get(actor.load_adapter.remote(self._adapter, self.weight_version))
        elif self._refs:
            ray.get(actor.load_buckets.remote(self._refs, self.weight_version))

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float,
                 seed: int) -> RolloutBatch:
        k = len(self.actors)
        chunks = [prompts[i * len(prompts) // k: (i + 1) * len(prompts) // k] for i in range(k)]
        args = {i: (c, n, temperature, top_p, self.cfg.max_new_tokens, seeds.engine_share(seed, i))
                for i, c in enumerate(chunks) if c}
        samples = [s for part in self.group.call_each("generate", args) for s in part]
        return RolloutBatch(
            prompts=prompts, group_size=n,
            prompt_ids=[s.prompt_ids for s in samples], response_ids=[s.response_ids for s in samples],
            rollout_logprobs=[s.logprobs for s in samples], response_texts=[s.text for s in samples],
            truncated=[s.truncated for s in samples], weight_version=self.weight_version)

    def sleep(self) -> None:
        """Colocated pools: every engine frees its device memory until the next weight sync
        (:meth:`RolloutEngine.sleep`)."""
        self.group.call("sleep")
        self._asleep = True

    def load_weights(self, refs: PublishedWeights, version: int) -> list[int]:
        """Every engine loads the weights (waking first if asleep: weights, load, then the KV
        cache); returns the version each engine reports."""
        if not self._asleep:
            return self._load(refs, version)
        self.group.call("wake", ["weights"])
        versions = self._load(refs, version)
        self.group.call("wake", ["kv_cache"])
        self._asleep = False
        return versions

    def _load(self, refs: PublishedWeights, version: int) -> list[int]:
        if isinstance(refs, AdapterWeights):
            self._adapter, self.weight_version = refs, version
            return self.group.call("load_adapter", refs, version)
        if isinstance(refs, CollectiveSync):  # learner rank 0 is broadcasting: receive alongside
            self.weight_version = version
            versions = self.group.call("receive_weights", version)
            wait_or_fail(refs.futures, "learner rank")
            return versions
        self._refs, self.weight_version = refs, version
        return self.group.call("load_buckets", refs, version)

    def call(self, method: str, *args: Any) -> list[Any]:
        """``engine.method(*args)`` on every engine, results in engine order."""
        return self.group.call(method, *args)


def _accumulation_steps(cfg: Config) -> int:
    """Micro-batches per rank and optimizer step: each rank gets its share of a mini-batch's
    ``mini_batch_size * rollout.n`` sequences, ``micro_batch_size`` at a time."""
    if cfg.learner.max_tokens_per_micro_batch:
        return 1  # the count varies with the lengths: the learner marks each step's last micro-batch itself
    per_rank_seqs = cfg.learner.mini_batch_size * cfg.rollout.n // cfg.learner.num_ranks
    return per_rank_seqs // cfg.learner.micro_batch_size


class LearnerGroup(_Pool):
    """``learner.num_ranks`` DeepSpeed ZeRO-3 ranks forming one process group; a dead rank is a
    :class:`WorkerFailure` (the others would hang in the next collective)."""

    def __init__(self, cfg: Config, layout: PoolLayout, device: str, pg: Any = None) -> None:
        """``pg``: the placement group shared with the engines (colocated pools); None = its own."""
        from rl_vlm.distributed.workers.learner import Learner

        self.cfg, self.device = cfg, device
        n = cfg.learner.num_ranks
        self.world_size = n
        self.model = resolve_model(cfg.model, device)
        args = [(r, n, self.model, cfg.learner, cfg.algorithm, device, cfg.trainer.seed,
                 cfg.cluster.learner_cpu_affinity) for r in range(len(layout.learner_bundles))]
        self.group = ActorGroup(Learner, layout.learner_bundles, args, name="rl_vlm_learner",
                                what="learner rank", policy=Fail(), pg=pg, share=layout.share)
        # Rank 0 hosts the rendezvous of the ranks' process group.
        addr, port = self.group.call_each("free_address", {0: ()})[0]
        self.num_params: int = self.group.call("init", addr, port, _accumulation_steps(cfg))[0]
        self.collective = False
        self.sharding: StepSharding = shard_step([], n, 1, 1)
        """The split of the last :meth:`set_batch` (none before the first)."""

    def reconfigure(self, cfg: Config) -> None:
        """Re-point the ranks at another run (same ``learner.num_ranks``): every rank drops its
        engines and builds the new run's in its own process (:meth:`Learner.reinit`), as fresh
        actors would, without paying the process start and imports again."""
        if cfg.learner.num_ranks != self.world_size:
            raise ValueError(f"learner.num_ranks={cfg.learner.num_ranks}, but this pool has {self.world_size} ranks")
        self.cfg = cfg
        self.model = resolve_model(cfg.model, self.device)
        self.num_params = self.group.call("reinit", self.model, cfg.learner,
                                          cfg.algorithm, cfg.trainer.seed,
                                          _accumulation_steps(cfg))[0]
        self.sharding = shard_step([], self.world_size, 1, 1)

    @property
    def assignment(self) -> list[list[int]]:
        """Per rank, the global sequence indices it got in the last :meth:`set_batch`."""
        return self.sharding.assignment

    @property
    def micro_batches(self) -> list[list[int]]:
        return self.sharding.micro_batches

    @property
    def device_mini_batches(self) -> list[list[int]]:
        return self.sharding.device_mini_batches

    def stop(self) -> None:
        """Kill every rank (after one died: the others would hang in the next collective)."""
        self.group.stop()

    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its shards into checkpoint directory ``path`` (returns when all did)."""
        self.group.call("save_checkpoint", path)

    def load_checkpoint(self, path: str) -> None:
        self.group.call("load_checkpoint", path)

    def pids(self) -> list[int]:
        return self.group.call("pid")

    def set_batch(self, batch: LearnerBatch, shape: StepShape) -> None:
        """Split the step's sequences over ranks (:func:`rl_vlm.distributed.sharding.shard_step`:
        each mini-batch of ``shape.mini_batch_size`` prompts x ``shape.group_size`` sequences is
        cut into ``num_ranks`` contiguous slices) and hand every rank its
        :class:`~rl_vlm.distributed.sharding.RankShard`."""
        lc = self.cfg.learner
        sharding = shard_step([len(r) for r in batch.response_ids], self.world_size,
                              shape.mini_batch_size * shape.group_size, lc.micro_batch_size,
                              [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)],
                              lc.max_tokens_per_micro_batch, not packs(lc.packing, self.model.attn_implementation))
        self.sharding = sharding
        self.group.call_each("set_batch", [(s,) for s in rank_shards(batch, sharding, shape)])

    def compute_logprobs(self, which: LogprobModel = "policy") -> list[torch.Tensor]:
        """[N] per-sequence response log-probs (``policy``, ``reference`` or ``ema``), global order."""
        return gather(self.group.call("compute_logprobs", which), self.sharding, torch.empty(0))

    def compute_views(self) -> dict[str, list[torch.Tensor]]:
        """``view/<name>/<key>`` -> [N] per-sequence values of every algorithm view, global order."""
        parts = self.group.call("compute_views")
        return {f"view/{name}/{key}": gather([p[name][key] for p in parts], self.sharding, torch.empty(0))
                for name, res in parts[0].items() for key in res}

    def update(self, advantages: list[torch.Tensor], old: list[torch.Tensor],
               ref: list[torch.Tensor] | None) -> dict[str, float]:
        adv, olds = per_rank(advantages, self.sharding), per_rank(old, self.sharding)
        refs = [None] * self.world_size if ref is None else per_rank(ref, self.sharding)
        return _sum_metrics(self.group.call_each("update", list(zip(adv, olds, refs, strict=True))))

    def sft_update(self, weights: list[float], response_lengths: list[int]) -> dict[str, float]:
        """Supervised update on the batch of the last :meth:`set_batch`: ``weights`` [N] (1 =
        train on the sequence, 0 = padding), ``response_lengths`` [N]; metrics summed over ranks."""
        num_tokens = sft_num_tokens(self.sharding.device_mini_batches, self.world_size, weights, response_lengths)
        return _sum_metrics(self.group.call_each(
            "sft_update", [(w, num_tokens) for w in per_rank(weights, self.sharding)]))

    def publish_weights(self) -> PublishedWeights:
        """Object store: ``refs[b][r]`` = learner rank r's part of bucket b (one part per bucket
        below ZeRO-3), for the engines' :func:`fetch_buckets`. Collective: the ranks' pending
        gather-and-broadcast calls, which :meth:`RolloutGroup.load_weights` receives and awaits."""
        if self.cfg.model.lora.rank:  # the adapter alone, from rank 0 (every rank gathers)
            adapter: AdapterWeights = self.group.call("publish_adapter")[0]
            return adapter
        if self.collective:
            return CollectiveSync(self.group.submit("broadcast_weights"))
        bucket_bytes = self.cfg.cluster.weight_sync_bucket_mb << 20
        per_rank_refs = [refs for refs in self.group.call("publish_weights", bucket_bytes) if refs]
        return [list(parts) for parts in zip(*per_rank_refs, strict=True)]

    def node_ids(self) -> list[str]:
        return self.group.call("node_id")

    def save_hf(self, out_dir: str) -> None:
        import os

        os.makedirs(out_dir, exist_ok=True)
        self.group.call("save_hf", out_dir)
