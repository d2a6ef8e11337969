"""The two actor pools the driver drives: the rollout pool (vLLM engines, dead ones restarted in
place) and the learner pool (one DeepSpeed ZeRO-3 group)."""

from __future__ import annotations

import os
from typing import Any

import torch

from rl_vlm.batch import LearnerBatch, Prompt, RolloutBatch
from rl_vlm.config import (
    Config,
)
from rl_vlm.distributed.runtime import PoolLayout, _placement_group, _strategy
from rl_vlm.distributed.sync.collective import CollectiveSync
from rl_vlm.distributed.sync.object_store import fetch_buckets


class WorkerFailure(RuntimeError):
    """A learner rank died: the driver restarts the system from the newest checkpoint."""


class RolloutGroup:
    """``rollout.num_engines`` vLLM engines; a step's prompts are split across them evenly.


    An engine whose actor dies (process killed, node lost) is restarted in its bundle, loaded
    with the current weights (the last synced buckets stay in the object store for this) and
    its share of the work is retried, up to ``MAX_RETRIES`` times per call.
    """


    MAX_RETRIES = 3


    def __init__(self, cfg: Config, layout: PoolLayout, device: str) -> None:
        import ray

        from rl_vlm.distributed.workers.rollout import RolloutEngine


        class RolloutActor(RolloutEngine):
            def load_buckets(self, refs: list[list[Any]], version: int) -> int:
                return self.update_weights(fetch_buckets(refs), version)


            def pid(self) -> int:
                return os.getpid()


            def node_id(self) -> str:
                return ray.get_runtime_context().get_node_id()


        self.cfg, self._full_cfg, self._device = cfg.rollout, cfg, device
        self.pg = _placement_group(layout.rollout_bundles, "rl_vlm_rollout")
        self._bundles = layout.rollout_bundles
        self._actor_cls = ray.remote(RolloutActor)
        self.actors = [self._start(i) for i in range(len(self._bundles))]
        self.weight_version = 0
        self._refs: list[list[Any]] = []
        self.restarts = 0
        self.collective = False
        """Weights arrive through the weight-sync group (:func:`connect_weight_sync`)."""


    def _start(self, i: int) -> Any:
        b = self._bundles[i]
        return self._actor_cls.options(num_cpus=b.get("CPU", 1), num_gpus=b.get("GPU", 0),
                                       scheduling_strategy=_strategy(self.pg, i)).remote(
            self._full_cfg.model.path, self.cfg, self._full_cfg.trainer.seed + 1000 * i, self._device)


    def _restart(self, i: int) -> None:
        import logging

        import ray


        logging.getLogger("rl_vlm.distributed").warning(
            "rollout engine %d died; restarting it and loading weight version %d", i, self.weight_version)
        ray.kill(self.actors[i], no_restart=True)
        if self.collective:  # the group lost a member; a new group needs every member again
            raise WorkerFailure(f"rollout engine {i} died; the weight-sync group cannot take it back")
        self.actors[i] = self._start(i)
        self.restarts += 1
        if self._refs:
            ray.get(self.actors[i].load_buckets.remote(self._refs, self.weight_version))


    def _call(self, method: str, args_per_actor: dict[int, tuple]) -> dict[int, Any]:
        """``actor.method(*args)`` on the given actors, restarting dead ones and retrying."""
        import ray
        from ray.exceptions import RayActorError


        pending = dict(args_per_actor)
        results: dict[int, Any] = {}
        for _ in range(self.MAX_RETRIES + 1):
            futures = {i: getattr(self.actors[i], method).remote(*a) for i, a in pending.items()}
            failed = []
            for i, f in futures.items():
                try:
                    results[i] = ray.get(f)
                except RayActorError:
                    failed.append(i)
            if not failed:
                return results
            for i in failed:
                self._restart(i)
            pending = {i: pending[i] for i in failed}
        raise WorkerFailure(f"rollout engines {sorted(pending)} kept dying after {self.MAX_RETRIES} restarts")


    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float,
                 seed: int) -> RolloutBatch:
        k = len(self.actors)
        chunks = [prompts[i * len(prompts) // k: (i + 1) * len(prompts) // k] for i in range(k)]
        args = {i: (c, n, temperature, top_p, self.cfg.max_new_tokens, seed + 7919 * i)
                for i, c in enumerate(chunks) if c}
        parts = self._call("generate", args)
        samples = [s for i in sorted(parts) for s in parts[i]]
        return RolloutBatch(
            prompts=prompts, group_size=n,
            prompt_ids=[s.prompt_ids for s in samples], response_ids=[s.response_ids for s in samples],
            rollout_logprobs=[s.logprobs for s in samples], response_texts=[s.text for s in samples],
            truncated=[s.truncated for s in samples], weight_version=self.weight_version)


    def load_weights(self, refs: list[list[Any]] | CollectiveSync, version: int) -> list[int]:
        """Every engine loads the buckets; returns the version each engine reports."""
        if isinstance(refs, CollectiveSync):  # learner rank 0 is broadcasting: receive alongside
            self.weight_version = version
            versions = self.call("receive_weights", version)
            LearnerGroup._get(refs.futures)
            return versions
        self._refs, self.weight_version = refs, version
        versions = self._call("load_buckets", {i: (refs, version) for i in range(len(self.actors))})
        return [versions[i] for i in sorted(versions)]


    def call(self, method: str, *args: Any) -> list[Any]:
        out = self._call(method, {i: args for i in range(len(self.actors))})
        return [out[i] for i in sorted(out)]


def _intern(imgs: list[Any], images: list[list[Any]], distinct: dict[int, int]) -> int:
    """Index of the image list ``imgs`` in ``images``, appending it the first time it is seen."""
    if id(imgs) not in distinct:
        distinct[id(imgs)] = len(images)
        images.append(imgs)
    return distinct[id(imgs)]


class LearnerGroup:
    """``learner.num_ranks`` DeepSpeed ZeRO-3 ranks forming one process group."""


    def __init__(self, cfg: Config, layout: PoolLayout, device: str) -> None:
        import ray

        from rl_vlm.distributed.workers.learner import Learner


        self.cfg = cfg
        n = cfg.learner.num_ranks
        self.world_size = n
        self.pg = _placement_group(layout.learner_bundles, "rl_vlm_learner")
        actor_cls = ray.remote(Learner)
        self.actors = [
            actor_cls.options(num_cpus=b.get("CPU", 1), num_gpus=b.get("GPU", 0),
                              scheduling_strategy=_strategy(self.pg, r)).remote(
                r, n, cfg.model, cfg.learner, cfg.algorithm, device, cfg.trainer.seed)
            for r, b in enumerate(layout.learner_bundles)]
        addr, port = ray.get(self.actors[0].free_address.remote())
        per_rank = cfg.learner.mini_batch_size * cfg.rollout.n // n
        gas = per_rank // cfg.learner.micro_batch_size
        counts = self._get([a.init.remote(addr, port, gas) for a in self.actors])
        self.num_params = counts[0]
        self.collective = False


    @staticmethod
    def _get(futures: list[Any]) -> list[Any]:
        """ray.get, turning a dead rank into :class:`WorkerFailure` (the group cannot continue
        without it: the survivors would hang in the next collective)."""
        import ray
        from ray.exceptions import RayActorError


        try:
            return ray.get(futures)
        except RayActorError as e:
            raise WorkerFailure(f"a learner rank died: {e}") from e


    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its shards into checkpoint directory ``path`` (returns when all did)."""
        self._get([a.save_checkpoint.remote(path) for a in self.actors])


    def load_checkpoint(self, path: str) -> None:
        self._get([a.load_checkpoint.remote(path) for a in self.actors])


    def pids(self) -> list[int]:
        return self._get([a.pid.remote() for a in self.actors])


    def set_batch(self, batch: LearnerBatch, mini_batch_size: int, group_size: int, max_response_len: int,
                  temperature: float, step: int, total_steps: int) -> None:
        """Split the step's sequences over ranks: each mini-batch (``mini_batch_size`` prompts x
        ``group_size`` sequences) is cut into ``num_ranks`` contiguous slices. Sets
        :attr:`assignment` (per rank, the global sequence indices it got) and the statistic units
        :attr:`micro_batches` / :attr:`device_mini_batches` (global indices)."""


        from rl_vlm.distributed.workers.learner import RankShard


        W, m = self.world_size, self.cfg.learner.micro_batch_size
        seqs_per_mb = mini_batch_size * group_size
        N = len(batch)
        assignment: list[list[int]] = [[] for _ in range(W)]
        mbs: list[list[list[int]]] = [[] for _ in range(W)]
        num_tokens, num_seqs = [], []
        self.micro_batches, self.device_mini_batches = [], []
        for start in range(0, N, seqs_per_mb):
            idx = list(range(start, min(start + seqs_per_mb, N)))
            num_tokens.append(float(sum(len(batch.response_ids[i]) for i in idx)))
            num_seqs.append(float(sum(1 for i in idx if batch.response_ids[i])))
            per = len(idx) // W
            for r in range(W):
                part = idx[r * per: (r + 1) * per]
                mbs[r].append(list(range(len(assignment[r]), len(assignment[r]) + len(part))))
                assignment[r].extend(part)
                self.device_mini_batches.append(part)
                self.micro_batches.extend(part[j: j + m] for j in range(0, len(part), m))
        futures = []
        for r, actor in enumerate(self.actors):
            sel = assignment[r]
            images: list[list[Any]] = []
            distinct: dict[int, int] = {}  # id(image list) -> index in images; a group shares its list
            image_index = [_intern(batch.images[i], images, distinct) for i in sel]
            view_index = {name: [_intern(v[i], images, distinct) for i in sel] for name, v in batch.view_images.items()}
            shard = RankShard(
                images=images, image_index=image_index, view_index=view_index,
                prompt_ids=[batch.prompt_ids[i] for i in sel], response_ids=[batch.response_ids[i] for i in sel],
                mini_batches=mbs[r], num_tokens=num_tokens, num_seqs=num_seqs,
                max_response_len=max_response_len, temperature=temperature, step=step, total_steps=total_steps)
            futures.append(actor.set_batch.remote(shard))
        self._get(futures)
        self.assignment = assignment


    def _gather(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        N = sum(len(a) for a in self.assignment)
        out: list[torch.Tensor] = [torch.empty(0)] * N
        for r, values in enumerate(per_rank):
            for i, v in zip(self.assignment[r], values):
                out[i] = v
        return out


    def compute_logprobs(self, which: str = "policy") -> list[torch.Tensor]:
        """[N] per-sequence response log-probs (``policy``, ``reference`` or ``ema``), global order."""


        return self._gather(self._get([a.compute_logprobs.remote(which) for a in self.actors]))


    def compute_views(self) -> dict[str, list[torch.Tensor]]:
        """``view/<name>/<key>`` -> [N] per-sequence values of every algorithm view, global order."""


        parts = self._get([a.compute_views.remote() for a in self.actors])
        return {f"view/{name}/{key}": self._gather([p[name][key] for p in parts])
                for name, res in parts[0].items() for key in res}


    def update(self, advantages: list[torch.Tensor], old: list[torch.Tensor],
               ref: list[torch.Tensor] | None) -> dict[str, float]:


        futures = []
        for r, a in enumerate(self.actors):
            sel = self.assignment[r]
            futures.append(a.update.remote([advantages[i] for i in sel], [old[i] for i in sel],
                                           None if ref is None else [ref[i] for i in sel]))
        metrics: dict[str, float] = {}
        for part in self._get(futures):
            for k, v in part.items():
                metrics[k] = metrics.get(k, 0.0) + v
        return metrics


    def sft_update(self, weights: list[float], response_lengths: list[int]) -> dict[str, float]:
        """Supervised update on the batch of the last :meth:`set_batch`: ``weights`` [N] (1 =
        train on the sequence, 0 = padding), ``response_lengths`` [N]; metrics summed over ranks."""
        W = self.world_size
        num_tokens = [float(sum(weights[i] * response_lengths[i] for part in self.device_mini_batches[m: m + W]
                                for i in part)) for m in range(0, len(self.device_mini_batches), W)]
        futures = [a.sft_update.remote([weights[i] for i in self.assignment[r]], num_tokens)
                   for r, a in enumerate(self.actors)]
        metrics: dict[str, float] = {}
        for part in self._get(futures):
            for k, v in part.items():
                metrics[k] = metrics.get(k, 0.0) + v
        return metrics


    def publish_weights(self) -> list[list[Any]] | CollectiveSync:
        """Object store: ``refs[b][r]`` = learner rank r's part of bucket b (one part per bucket
        below ZeRO-3), for the engines' :func:`fetch_buckets`. Collective: the ranks' pending
        gather-and-broadcast calls, which :meth:`RolloutGroup.load_weights` receives and awaits."""
        if self.collective:
            return CollectiveSync([a.broadcast_weights.remote() for a in self.actors])
        bucket_bytes = self.cfg.cluster.weight_sync_bucket_mb << 20
        per_rank = [refs for refs in self._get([a.publish_weights.remote(bucket_bytes) for a in self.actors]) if refs]
        return [list(parts) for parts in zip(*per_rank, strict=True)]


    def node_ids(self) -> list[str]:
        return self._get([a.node_id.remote() for a in self.actors])


    def save_hf(self, out_dir: str) -> None:


        os.makedirs(out_dir, exist_ok=True)
        self._get([a.save_hf.remote(out_dir) for a in self.actors])
