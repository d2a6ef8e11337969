"""One learner rank: a DeepSpeed ZeRO-3 engine over a Qwen2.5-VL policy (a Ray actor).

The driver gives every rank its share of the step's sequences once (:meth:`Learner.set_batch`),
then asks for old-policy log-probs, runs the update with the advantages it computed, and
finally has every rank publish its part of the weights for the rollout engines.

Loss scaling. The algorithm returns micro-batch losses normalised by *global* denominators
(tokens or sequences of the whole mini-batch over all ranks), so their sum over micro-batches
and ranks is the mini-batch loss. DeepSpeed divides each backward by the accumulation steps and
averages gradients over ranks; we multiply both factors back so the applied gradient is exactly
the gradient of that sum.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from rl_vlm import seeds
from rl_vlm.algorithms import build_algorithm
from rl_vlm.algorithms.base import LossInputs
from rl_vlm.algorithms.context import ViewOutputs
from rl_vlm.batch import SequenceBatch
from rl_vlm.config import AlgorithmConfig, LearnerConfig, ModelConfig
from rl_vlm.distributed.sharding import RankShard
from rl_vlm.distributed.sync.adapter import AdapterWeights, PackedAdapter
from rl_vlm.distributed.workers.identity import ActorIdentity, pin_to_cpus
from rl_vlm.distributed.workers.logprobs import (
    EntropyMode,
    lm_head,
    sequence_logprobs,
    sequence_view_kl,
)
from rl_vlm.distributed.workers.logprobs import token_logprobs as token_logprobs  # re-exported for the tests
from rl_vlm.distributed.workers.packing import micro_batch_hidden, packs
from rl_vlm.distributed.workers.zero3 import partition, refresh_persistent, swapped_partitions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Learner(ActorIdentity):
    """A ZeRO-3 rank. Construct, then call :meth:`init` on every rank at once (it rendezvouses)."""

    def __init__(self, rank: int, world_size: int, model_cfg: ModelConfig, learner_cfg: LearnerConfig,
                 algorithm_cfg: AlgorithmConfig, device: str, seed: int, cpu_affinity: tuple[int, ...] = ()) -> None:
        """``cpu_affinity``: ``cluster.learner_cpu_affinity``, the CPUs this process is pinned to on
        CPU (empty = not pinned); kept by :meth:`reinit`."""
        if device == "cpu":
            pin_to_cpus(cpu_affinity, "cluster.learner_cpu_affinity")  # before torch starts its threads
        self.rank, self.world_size, self.device_kind = rank, world_size, device
        self._configure(model_cfg, learner_cfg, algorithm_cfg, seed)

    def _configure(self, model_cfg: ModelConfig, learner_cfg: LearnerConfig, algorithm_cfg: AlgorithmConfig,
                   seed: int) -> None:
        self.model_cfg, self.cfg = model_cfg, learner_cfg
        self.packed = packs(learner_cfg.packing, model_cfg.attn_implementation)
        self.algorithm = build_algorithm(algorithm_cfg)
        self.seed = seed
        torch.set_num_threads(learner_cfg.torch_threads)
        self.shard: RankShard | None = None
        self._pixels: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.optimizer_steps = 0
        self._ema_adapter: list[torch.Tensor] | None = None
        """LoRA with an EMA reference: this rank's partitions of the EMA of every adapter tensor."""
        self._adapter_config = ""
        """LoRA: ``adapter_config.json`` of the adapter, as the engines load it (fixed for the run)."""

    def reinit(self, model_cfg: ModelConfig, learner_cfg: LearnerConfig, algorithm_cfg: AlgorithmConfig,
               seed: int, gas: int) -> int:
        """Start over as a fresh rank of another run with the same world size, in this process:
        the old engines are dropped and :meth:`init` builds new ones (the process group, which
        only depends on the world size, is kept). What a new actor would compute, minus the
        process start and the imports. Returns the parameter count."""
        for name in ("engine", "ref_engine", "ema_engine"):
            engine = getattr(self, name, None)
            if engine is not None and hasattr(engine, "destroy"):
                engine.destroy()  # removes ZeRO-3's parameter hooks from the old model
            setattr(self, name, None)
        self._hf_ds = None
        gc.collect()
        self._configure(model_cfg, learner_cfg, algorithm_cfg, seed)
        return self.init(self._master[0], self._master[1], gas)

    # ---------------------------------------------------------------- setup
    @staticmethod
    def free_address() -> tuple[str, int]:
        """This node's IP and a free TCP port, for the process-group rendezvous."""
        import socket

        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def init(self, master_addr: str, master_port: int, gas: int) -> int:
        """Join the process group and build the DeepSpeed engine(s); returns the parameter count."""
        import deepspeed
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        from transformers.integrations import HfDeepSpeedConfig

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0" if self.device_kind == "cpu" else
                          str(self.rank % max(torch.cuda.device_count(), 1)))
        backend = "nccl" if self.device_kind == "gpu" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)  # once per process
        self._master = (master_addr, master_port)
        seed_everything(seeds.learner_rank(self.seed, self.rank))
        self.gas = gas
        ds_config = self._ds_config(gas)
        # Must stay alive while from_pretrained runs so weights are partitioned at load (ZeRO-3).
        self._hf_ds = HfDeepSpeedConfig(ds_config) if self.cfg.zero_stage == 3 else None
        dtype = torch.bfloat16 if self.model_cfg.dtype == "bfloat16" else torch.float32
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.model_cfg.path, dtype=dtype, attn_implementation=self.model_cfg.attn_implementation)
        if self.model_cfg.freeze_vision_tower:
            for p in model.model.visual.parameters():
                p.requires_grad_(False)
        model.config.use_cache = False
        lora = self.model_cfg.lora
        policy: torch.nn.Module = model
        if lora.rank:
            from rl_vlm.models.lora import wrap_policy

            policy = wrap_policy(model, lora, self.model_cfg.path)
        if self.model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if lora.rank:  # frozen embeddings: the checkpointed blocks' inputs need a grad path
                model.enable_input_require_grads()
        params = [p for p in policy.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(model=policy, model_parameters=params, config=ds_config)
        # Frozen copies for the KL reference and the EMA reference (GRPO-CARE), ZeRO-3 sharded
        # like the policy but without optimizer state. With LoRA neither is a second model: the
        # reference is the base with the adapter off, the EMA one an EMA of the adapter alone.
        frozen_config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}

        def frozen_copy() -> Any:
            m = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.model_cfg.path, dtype=dtype, attn_implementation=self.model_cfg.attn_implementation)
            engine, *_ = deepspeed.initialize(model=m, config=frozen_config)
            engine.eval()
            return engine

        self.ref_engine = frozen_copy() if self.algorithm.needs_reference and not lora.rank else None
        self.ema_engine = frozen_copy() if self.algorithm.ema_reference() is not None and not lora.rank else None
        if lora.rank and self.algorithm.ema_reference() is not None:
            self._ema_adapter = [partition(p).clone() for p in self._adapter_params()]
        if lora.rank:
            from rl_vlm.distributed.sync.adapter import adapter_config_json

            peft_model: Any = policy
            self._adapter_config = adapter_config_json(peft_model.peft_config["default"])
        self.processor = AutoProcessor.from_pretrained(self.model_cfg.path)
        self.image_token_id = model.config.image_token_id
        # transformers reads it process-wide: a model loaded later in this process (an export,
        # a test's reference model) must not be ZeRO-3-partitioned at load.
        self._hf_ds = None
        return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())

    def _adapter_params(self) -> list[torch.nn.Parameter]:
        """The LoRA adapter parameters (the trainable ones), in module order."""
        return [p for n, p in self.engine.module.named_parameters() if ".lora_" in n]

    def trainable_params(self) -> int:
        """Parameters the optimizer updates (the adapters under LoRA)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters() if p.requires_grad)

    def _ds_config(self, gas: int) -> dict[str, Any]:
        c = self.cfg
        zero: dict[str, Any] = {"stage": c.zero_stage}
        if c.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if c.offload_params:
            zero["offload_param"] = {"device": "cpu"}
        return {
            "train_micro_batch_size_per_gpu": c.micro_batch_size,
            "gradient_accumulation_steps": gas,
            "train_batch_size": c.micro_batch_size * gas * self.world_size,
            "gradient_clipping": c.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": self.model_cfg.dtype == "bfloat16"},
            "optimizer": {"type": "AdamW", "params": {
                "lr": c.lr, "betas": list(c.betas), "weight_decay": c.weight_decay, "eps": 1e-8,
                # No fused CUDA Adam on CPU; DeepSpeed's CPU Adam needs a compiled op.
                "torch_adam": self.device_kind == "cpu"}},
            # WarmupLR rejects 0 warm-up steps; 1 step at lr/1 is the same as none.
            "scheduler": {"type": "WarmupLR", "params": {
                "warmup_min_lr": 0.0 if c.warmup_steps else c.lr, "warmup_max_lr": c.lr,
                "warmup_num_steps": max(c.warmup_steps, 1), "warmup_type": "linear"}},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ---------------------------------------------------------------- per step
    def set_batch(self, shard: RankShard) -> None:
        """Receive this rank's sequences for the step and preprocess their images once."""
        self.shard = shard
        self._view_out: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._pixels = []
        for imgs in shard.images:
            out = self.processor.image_processor(images=imgs, return_tensors="pt")
            self._pixels.append((out["pixel_values"], out["image_grid_thw"]))

    def _shard(self) -> RankShard:
        if self.shard is None:
            raise RuntimeError("no batch: call set_batch first")
        return self.shard

    def _collate(self, idx: list[int], view: str | None = None) -> SequenceBatch:
        s = self._shard()
        assert s is not None
        image_of = s.image_index if view is None else s.view_index[view]
        seqs = [s.prompt_ids[i] + s.response_ids[i] for i in idx]
        T = max(len(x) for x in seqs)
        pad = self.processor.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(idx), T), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), T), dtype=torch.long)
        resp = torch.zeros((len(idx), T), dtype=torch.float32)
        pixels, grids, per_seq = [], [], []
        for row, i in enumerate(idx):
            p, r = len(s.prompt_ids[i]), len(s.response_ids[i])
            input_ids[row, : p + r] = torch.tensor(seqs[row])
            attn[row, : p + r] = 1
            resp[row, p: p + r] = 1.0
            pv, thw = self._pixels[image_of[i]]
            pixels.append(pv)
            grids.append(thw)
            per_seq.append(int(thw.shape[0]))
        return SequenceBatch(input_ids=input_ids, attention_mask=attn, response_mask=resp,
                             pixel_values=torch.cat(pixels), image_grid_thw=torch.cat(grids),
                             images_per_seq=per_seq, image_source=[image_of[i] for i in idx])

    def _hidden(self, module: torch.nn.Module, b: SequenceBatch) -> torch.Tensor:
        """[n, T, H] final hidden states (the LM head's input); no logits are computed. Packed
        without padding or right-padded, as ``learner.packing`` says, each distinct image list
        encoded once (:mod:`~rl_vlm.distributed.workers.packing`)."""
        return micro_batch_hidden(module, b, self.packed, self.image_token_id)

    def _forward(self, module: torch.nn.Module, b: SequenceBatch, entropy: EntropyMode
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, T] log-probs of the response tokens at the rollout temperature (0 elsewhere) and,
        unless ``entropy="none"``, their distributions' entropies; the LM head runs on
        ``learner.logprob_chunk_size`` response positions at a time
        (:mod:`rl_vlm.distributed.workers.logprobs`)."""
        hidden = self._hidden(module, b)
        dev = hidden.device
        return sequence_logprobs(hidden, b.input_ids.to(dev), b.response_mask.to(dev), lm_head(module),
                                 self._shard().temperature, self.cfg.logprob_chunk_size, entropy, self._head_calls())

    def _head_calls(self) -> int:
        """LM-head calls per micro-batch forward: the same on every rank and every micro-batch
        (ZeRO-3 traces module calls; see :func:`~rl_vlm.distributed.workers.logprobs._chunked`),
        enough chunks for a full micro-batch of the longest responses."""
        response = max(self._shard().max_response_len, 1)
        budget = self.cfg.max_tokens_per_micro_batch
        capacity = max(budget, response) if budget else self.cfg.micro_batch_size * response
        return max(math.ceil(capacity / self.cfg.logprob_chunk_size), 1)

    def _micro_batches(self) -> list[list[int]]:
        """Every micro-batch of the shard, mini-batch after mini-batch (the no-grad passes)."""
        return [micro for micros in self._shard().micro_batches for micro in micros]

    def _accumulate(self, k: int) -> Iterator[list[int]]:
        """Mini-batch k's micro-batches, the last one marked as DeepSpeed's accumulation boundary
        (their number varies with the lengths under a token budget; DeepSpeed's count is fixed)."""
        micros = self._shard().micro_batches[k]
        for j, micro in enumerate(micros):
            self.engine.set_gradient_accumulation_boundary(j == len(micros) - 1)
            yield micro

    def _responses(self, values: torch.Tensor, micro: list[int], out: list[torch.Tensor]) -> None:
        """Cut the response part of [n, T] ``values`` into ``out[i]`` for each sequence i."""
        s = self._shard()
        for row, i in enumerate(micro):
            p, r = len(s.prompt_ids[i]), len(s.response_ids[i])
            out[i] = values[row, p: p + r].float().cpu()

    @torch.no_grad()
    def compute_logprobs(self, which: str = "policy") -> list[torch.Tensor]:
        """Per-sequence log-probs of the response tokens ([len(response)] each), no grad, under
        the policy, the frozen ``reference`` or the ``ema`` reference."""
        lora = bool(self.model_cfg.lora.rank)
        engine = self.engine if lora else {"policy": self.engine, "reference": self.ref_engine,
                                           "ema": self.ema_engine}[which]
        engine.eval()
        s = self._shard()
        out: list[torch.Tensor] = [torch.empty(0)] * len(s.prompt_ids)
        with self._lora_model(which) if lora else contextlib.nullcontext():
            for micro in self._micro_batches():
                logp, _ = self._forward(engine, self._collate(micro), "none")
                self._responses(logp, micro, out)
        return out

    @contextlib.contextmanager
    def _lora_model(self, which: str) -> Iterator[None]:
        """Under LoRA, make the policy engine compute ``which``: the base model with the adapter
        disabled (``reference``), or the EMA adapter swapped in for the pass (``ema``; every rank
        swaps its own partitions, then the persistent tensors are re-gathered)."""
        if which == "policy":
            yield
        elif which == "reference":
            with self.engine.module.disable_adapter():
                yield
        else:
            assert self._ema_adapter is not None, "no EMA reference: the algorithm asked for none"
            with swapped_partitions(self._adapter_params(), self._ema_adapter):
                yield

    @torch.no_grad()
    def compute_views(self) -> dict[str, dict[str, list[torch.Tensor]]]:
        """For every view of the algorithm, per sequence: ``old_logprobs`` with the view's
        images and, for ``full_kl`` views, the exact per-token ``kl`` = KL(P ‖ P_view) and
        ``kl_rev`` = KL(P_view ‖ P) of the full next-token distributions (P: own images), at the
        response tokens, the LM head run a chunk of positions at a time on both views' hidden
        states. Kept for the update (:attr:`LossInputs.views`) and returned to the driver."""
        self.engine.eval()
        s = self._shard()
        n = len(s.prompt_ids)
        for view in self.algorithm.views():
            res = {"old_logprobs": [torch.empty(0)] * n}
            if view.full_kl:
                res.update(kl=[torch.empty(0)] * n, kl_rev=[torch.empty(0)] * n)
            for micro in self._micro_batches():
                b = self._collate(micro, view.name)
                hidden_v = self._hidden(self.engine, b)
                dev, head, temperature = hidden_v.device, lm_head(self.engine), s.temperature
                mask = b.response_mask.to(dev)
                logp_v, _ = sequence_logprobs(hidden_v, b.input_ids.to(dev), mask, head, temperature,
                                              self.cfg.logprob_chunk_size, "none", self._head_calls())
                self._responses(logp_v, micro, res["old_logprobs"])
                if view.full_kl:
                    hidden = self._hidden(self.engine, self._collate(micro))
                    kl, kl_rev = sequence_view_kl(hidden, hidden_v, mask, head, temperature,
                                                  self.cfg.logprob_chunk_size, self._head_calls())
                    self._responses(kl, micro, res["kl"])
                    self._responses(kl_rev, micro, res["kl_rev"])
            self._view_out[view.name] = res
        return self._view_out

    def _per_token(self, values: list[torch.Tensor], micro: list[int], like: SequenceBatch) -> torch.Tensor:
        out = torch.zeros_like(like.response_mask)
        for row, i in enumerate(micro):
            s = self._shard()
            p, r = len(s.prompt_ids[i]), len(s.response_ids[i])
            out[row, p: p + r] = values[i]
        return out

    def update(self, advantages: list[torch.Tensor], old_logprobs: list[torch.Tensor],
               ref_logprobs: list[torch.Tensor] | None) -> dict[str, float]:
        """One optimizer step per mini-batch. Inputs are per sequence of this rank's shard,
        response-aligned ([len(response)] each). Returns metrics summed over micro-batches
        (global-normalised contributions; the driver sums them over ranks) averaged over
        mini-batches, plus grad norm and learning rate."""
        s = self._shard()
        self.engine.train()
        totals: dict[str, float] = {}
        grad_norms, n_mb = [], len(s.mini_batches)
        grad_views = [v.name for v in self.algorithm.views() if v.with_grad]
        for k in range(n_mb):
            for micro in self._accumulate(k):
                b = self._collate(micro)
                # The entropy is a metric unless the loss uses its gradient: no graph then.
                logp, ent = self._forward(self.engine, b, "grad" if self.algorithm.needs_entropy_grad else "value")
                dev = logp.device
                views = {name: ViewOutputs(**{key: self._per_token(values, micro, b).to(dev)
                                              for key, values in res.items()})
                         for name, res in self._view_out.items()}
                for name in grad_views:
                    logprobs, _ = self._forward(self.engine, self._collate(micro, name), "none")
                    views[name] = replace(views[name], logprobs=logprobs)
                inp = LossInputs(
                    logprobs=logp, old_logprobs=self._per_token(old_logprobs, micro, b).to(dev),
                    ref_logprobs=None if ref_logprobs is None else self._per_token(ref_logprobs, micro, b).to(dev),
                    advantages=self._per_token(advantages, micro, b).to(dev), response_mask=b.response_mask.to(dev),
                    entropy=ent,
                    num_tokens=s.num_tokens[k], num_seqs=s.num_seqs[k],
                    max_response_len=s.max_response_len, step=s.step, total_steps=s.total_steps, views=views)
                res = self.algorithm.loss(inp)
                self.engine.backward(res.loss * self.gas * self.world_size)
                self.engine.step()
                for name, v in res.metrics.items():
                    totals[name] = totals.get(name, 0.0) + float(v) / n_mb
            grad_norms.append(self._after_optimizer_step())
        totals["grad_norm"] = float(np.mean(grad_norms)) / self.world_size  # the driver sums over ranks
        totals["lr"] = float(self.engine.get_lr()[0]) / self.world_size
        totals["micro_batches"] = sum(len(m) for m in s.micro_batches) / self.world_size  # per rank, as summed
        return totals

    def sft_update(self, weights: list[float], num_tokens: list[float]) -> dict[str, float]:
        """Supervised step(s) of the rejection-sampling SFT stage: one optimizer step per
        mini-batch on the token-mean NLL of this rank's sequences with weight 1 (weight-0
        sequences only keep the micro-batch count DeepSpeed accumulates over). ``weights``: [n]
        per sequence of the shard; ``num_tokens``: per mini-batch, the weighted response tokens
        over all ranks (the global denominator). Metrics as :meth:`update` returns them."""
        from rl_vlm.algorithms.core import sft_nll

        s = self._shard()
        self.engine.train()
        loss_sum, grad_norms, n_mb = 0.0, [], len(s.mini_batches)
        for k in range(n_mb):
            for micro in self._accumulate(k):
                b = self._collate(micro)
                logp, _ = self._forward(self.engine, b, "none")
                w = torch.tensor([weights[i] for i in micro], dtype=logp.dtype, device=logp.device)
                loss = sft_nll(logp, b.response_mask.to(logp.device) * w[:, None], num_tokens[k])
                self.engine.backward(loss * self.gas * self.world_size)
                self.engine.step()
                loss_sum += float(loss) / n_mb
            grad_norms.append(self._after_optimizer_step())
        return {"sft/loss": loss_sum, "grad_norm": float(np.mean(grad_norms)) / self.world_size,
                "lr": float(self.engine.get_lr()[0]) / self.world_size}

    def _after_optimizer_step(self) -> float:
        """Count the optimizer step, update the EMA reference when due; returns the grad norm."""
        gn = self.engine.get_global_grad_norm()
        self.optimizer_steps += 1
        ema = self.algorithm.ema_reference()
        if ema is not None and self.optimizer_steps % ema.update_every == 0:
            self._update_ema(ema.decay)
        return float(gn) if gn is not None else float("nan")

    @torch.no_grad()
    def _update_ema(self, decay: float) -> None:
        """φ ← decay·φ + (1 − decay)·θ (GRPO-CARE §4.1). Under ZeRO-3 both models are partitioned
        identically, so the update runs on each rank's own partitions: elementwise, it equals
        the authors' update on gathered weights without gathering them."""
        if self._ema_adapter is not None:  # LoRA: the EMA of the adapter (the base is frozen)
            for p, dst in zip(self._adapter_params(), self._ema_adapter, strict=True):
                dst.lerp_(partition(p).to(dst.dtype), 1.0 - decay)
            return
        assert self.ema_engine is not None, "no EMA reference: the algorithm asked for none"
        ema_params = list(self.ema_engine.module.parameters())
        for p, q in zip(self.engine.module.parameters(), ema_params, strict=True):
            dst = partition(q)
            dst.lerp_(partition(p).to(dst.dtype), 1.0 - decay)
        refresh_persistent(ema_params)

    # ---------------------------------------------------------------- weight sync
    def publish_adapter(self) -> AdapterWeights | None:
        """LoRA: gather the adapter (collective: every rank must call) and put it in the object
        store once, from rank 0 (returned there; the other ranks return None)."""
        import ray

        packed = self._packed_adapter()
        if packed is None:
            return None
        return AdapterWeights(ray.put(packed), self._adapter_config,
                              sum(math.prod(shape) for shape in packed.shapes) * packed.rows.itemsize)

    def adapter_tensors(self) -> dict[str, torch.Tensor] | None:
        """LoRA: the full adapter tensors under PEFT's saved names, on rank 0 (None elsewhere);
        collective under ZeRO-3."""
        packed = self._packed_adapter()
        return None if packed is None else packed.tensors()

    def _packed_adapter(self) -> PackedAdapter | None:
        """Every rank's partitions of every adapter tensor in one all-gather (ZeRO-3), on rank 0."""
        from rl_vlm.distributed.sync.adapter import gather_adapter
        from rl_vlm.models.lora import ADAPTER

        named = [(n.replace(f".{ADAPTER}.", "."), p) for n, p in self.engine.module.named_parameters()
                 if ".lora_A." in n or ".lora_B." in n]
        return gather_adapter([n for n, _ in named], [tuple(getattr(p, "ds_shape", p.shape)) for _, p in named],
                              [partition(p) for _, p in named], self.rank,
                              self.world_size if self.cfg.zero_stage == 3 else 1)

    def publish_weights(self, bucket_bytes: int) -> list[Any]:
        """Put this rank's part of every parameter in the object store, in buckets of about
        ``bucket_bytes`` of full parameters (every rank cuts the same buckets); returns the
        ObjectRefs. Under ZeRO-3 each rank puts its own partition, and the engines concatenate
        the ranks' parts (:func:`rl_vlm.distributed.sync.plan.assemble_parts`): no all-gather, which took
        ~60 % of a 60 M-parameter sync through gloo (docs/benchmarks.md). Below stage 3 every
        rank holds the whole model, so rank 0 puts it and the others return []."""
        import ray

        from rl_vlm.distributed.sync.plan import weight_part

        if self.cfg.zero_stage != 3 and self.rank != 0:
            return []
        params = dict(self.engine.module.named_parameters())
        return [ray.put([weight_part(s.name, s.shape, partition(params[s.name])) for s in bucket])
                for bucket in self.weight_plan(bucket_bytes)]

    def weight_plan(self, bucket_bytes: int) -> list[list[Any]]:
        """The bucket plan (:func:`rl_vlm.distributed.sync.plan.plan_buckets`) of the full parameters: the
        buckets of either transport (what the engines pre-allocate for a collective sync). Needs
        no gather (ZeRO-3 keeps full shapes)."""
        from rl_vlm.distributed.sync.plan import TensorSpec, plan_buckets

        specs = [TensorSpec(n, tuple(getattr(p, "ds_shape", p.shape)), p.dtype)
                 for n, p in self.engine.module.named_parameters()]
        return plan_buckets(specs, bucket_bytes)

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str,
                          bucket_bytes: int) -> None:
        """Rank 0 joins the weight-sync group as its rank 0 (hosting the store); other ranks only
        keep the plan, since they take part in the gathers."""
        from rl_vlm.distributed.sync.group import WeightGroup

        self._sync_plan = self.weight_plan(bucket_bytes)
        self._sync_group = WeightGroup(host, port, 0, world_size, backend) if self.rank == 0 else None

    def broadcast_weights(self) -> int:
        """Gather the full parameters bucket by bucket (collective: every rank must call) and
        broadcast each from rank 0 to the vLLM workers; returns the number of buckets."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        for bucket in self._sync_plan:
            group = [params[s.name] for s in bucket]
            with deepspeed.zero.GatheredParameters(group, modifier_rank=None, enabled=self.cfg.zero_stage == 3):
                if self._sync_group is not None:
                    self._sync_group.send_buckets([bucket], [[p.detach() for p in group]])
        return len(self._sync_plan)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str) -> None:
        """Write this rank's share of the learner state into checkpoint directory ``path``
        (collective: every rank must call). DeepSpeed writes the ZeRO-3 shards of the model,
        the optimizer and the LR scheduler under ``learner/``; beside them go this rank's EMA
        partitions (GRPO-CARE), its RNG states and its optimizer-step counter. Rank 0 also
        writes the HF config and processor that ``rl-vlm export`` needs."""
        from rl_vlm.seeds import rng_state

        lora = bool(self.model_cfg.lora.rank)
        # LoRA: the frozen base is model.path's, so only the adapter (and its optimizer state) is saved.
        self.engine.save_checkpoint(path, tag="learner", save_latest=False, exclude_frozen_parameters=lora,
                                    client_state={"optimizer_steps": self.optimizer_steps})
        state: dict[str, Any] = {"rng": rng_state(), "optimizer_steps": self.optimizer_steps}
        if self.ema_engine is not None:
            state["ema"] = [partition(q).clone() for q in self.ema_engine.module.parameters()]
        if self._ema_adapter is not None:
            state["ema"] = [t.clone() for t in self._ema_adapter]
        torch.save(state, os.path.join(path, f"rank{self.rank}.pt"))
        if self.rank == 0:
            hf = os.path.join(path, "hf")
            self.engine.module.config.save_pretrained(hf)
            self.processor.save_pretrained(hf)
            if lora:  # what `rl-vlm export` needs to rebuild the wrapped model over model.path's base
                module: Any = self.engine.module
                module.peft_config["default"].save_pretrained(hf)

    def load_checkpoint(self, path: str) -> int:
        """Restore what :meth:`save_checkpoint` wrote (collective); returns the optimizer step."""
        from rl_vlm.seeds import set_rng_state

        lora = bool(self.model_cfg.lora.rank)
        load_path, _ = self.engine.load_checkpoint(path, tag="learner", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True, load_module_strict=not lora)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no learner state under {path}/learner")
        state = torch.load(os.path.join(path, f"rank{self.rank}.pt"), weights_only=False)
        if self.ema_engine is not None or self._ema_adapter is not None:
            if "ema" not in state:
                raise RuntimeError(f"{path} holds no EMA reference model but the algorithm needs one")
            with torch.no_grad():
                if self._ema_adapter is not None:
                    for dst, saved in zip(self._ema_adapter, state["ema"], strict=True):
                        dst.copy_(saved)
                else:
                    assert self.ema_engine is not None
                    ema_params = list(self.ema_engine.module.parameters())
                    for q, saved in zip(ema_params, state["ema"], strict=True):
                        partition(q).copy_(saved)
                    refresh_persistent(ema_params)
        self.optimizer_steps = int(state["optimizer_steps"])
        set_rng_state(state["rng"])
        return self.optimizer_steps

    def save_hf(self, out_dir: str) -> None:
        """Write a Hugging Face directory (weights, config, processor) of the current policy."""
        import deepspeed

        from rl_vlm.models.lora import merged_state_dict

        module: Any = self.engine.module
        lora = bool(self.model_cfg.lora.rank)
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.cfg.zero_stage == 3):
            if self.rank == 0:
                # LoRA: the adapters folded into the base weights, a plain HF model.
                state = (merged_state_dict(module) if lora else
                         {k: v.detach().cpu().clone() for k, v in module.state_dict().items()})
        if self.rank == 0:
            (module.get_base_model() if lora else module).save_pretrained(out_dir, state_dict=state)
            self.processor.save_pretrained(out_dir)
