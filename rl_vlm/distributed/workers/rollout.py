"""One rollout engine: a vLLM ``LLM`` that samples responses and reloads weights in place.

A plain class (tests drive it without Ray); :mod:`rl_vlm.distributed.pools` makes it a Ray
actor. The engine core runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the actor owns
it directly; with ``rollout.tensor_parallel_size > 1`` its TP workers are processes of the actor
(:func:`engine_args`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from rl_vlm import seeds
from rl_vlm.batch import Prompt
from rl_vlm.config import DataConfig, LoraConfig, RolloutConfig
from rl_vlm.distributed.workers.identity import ActorIdentity, pin_to_cpus
from rl_vlm.models.lora import engine_max_lora_rank
from rl_vlm.validation import resolve_enforce_eager, resolve_rollout_dtype

if TYPE_CHECKING:
    from vllm.inputs import TextPrompt
    from vllm.lora.request import LoRARequest

    from rl_vlm.distributed.interfaces import WeightRefs
    from rl_vlm.distributed.sync.adapter import AdapterWeights, PackedAdapter


@dataclass
class SampleOut:
    """One sampled response."""

    prompt_ids: list[int]
    """Prompt token ids as the engine saw them (image pads expanded)."""
    response_ids: list[int]
    logprobs: list[float]
    """The engine's log-prob of each sampled token (same length as ``response_ids``)."""
    text: str
    truncated: bool
    """Stopped by ``max_new_tokens`` rather than EOS."""


MAX_IMAGES_PER_PROMPT = 4
"""vLLM's ``limit_mm_per_prompt`` for images (it sizes the encoder budget by it)."""

MIN_BATCHED_TOKENS = 16384
"""Floor of ``max_num_batched_tokens``: without chunked prefill one scheduler step must hold a
whole prompt, and several short ones should share a step."""


def engine_args(model_path: str, cfg: RolloutConfig, seed: int, device: str, max_model_len: int,
                lora: LoraConfig | None = None, sleep_mode: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for one engine (pure: unit-tested without vLLM).

    - ``max_model_len``: ``data.max_prompt_length + rollout.max_new_tokens``
      (:func:`rl_vlm.validation.engine_max_model_len`), so no prompt the data layer lets through
      is refused by the engine and no response is capped below ``max_new_tokens``.
    - ``tensor_parallel_size > 1``: ``distributed_executor_backend="mp"``. Inside a
      placement-group actor vLLM would otherwise pick its Ray executor (vllm/config/parallel.py),
      which refuses a bundle of more than one GPU (vllm/v1/executor/ray_utils.py) and would wait
      for GPUs the actor already holds; with ``mp`` the engine's TP workers are processes of
      this actor on the tp GPUs Ray gave it (vLLM forces ``spawn`` inside Ray actors). Every
      worker loads the extension below and receives full tensors; vLLM's loaders shard them.
    - ``enforce_eager``: per device unless set (:func:`rl_vlm.validation.resolve_enforce_eager`).
    - ``lora`` (``model.lora`` with rank > 0): vLLM LoRA, one adapter at a time (each sync
      replaces it), tower and merger included when the adapters reach into the vision tower.
    - ``sleep_mode`` (colocated pools on GPU): vLLM's sleep mode, so the engine can free its
      memory while the learners update (``rollout.sleep_level``).
    """
    # rollout.dtype=auto: bf16 on GPU; fp32 on CPU like the CPU learner, so engine and learner
    # log-probs agree closely.
    args: dict[str, Any] = {
        "model": model_path, "seed": seed, "dtype": resolve_rollout_dtype(cfg.dtype, device),
        "enforce_eager": resolve_enforce_eager(cfg.enforce_eager, device), "max_model_len": max_model_len,
        # No chunked prefill: vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset")
        # when a request with its own seed is split across scheduler steps.
        "enable_chunked_prefill": False, "max_num_batched_tokens": max(MIN_BATCHED_TOKENS, max_model_len),
        "limit_mm_per_prompt": {"image": MAX_IMAGES_PER_PROMPT},
        "worker_extension_cls": "rl_vlm.distributed.sync.engine_hook.WeightUpdateExtension",
    }
    if device == "gpu":
        args.update(gpu_memory_utilization=cfg.gpu_memory_utilization, tensor_parallel_size=cfg.tensor_parallel_size)
        if cfg.tensor_parallel_size > 1:
            args["distributed_executor_backend"] = "mp"
        if sleep_mode:
            args["enable_sleep_mode"] = True
    if lora is not None and lora.rank:
        args.update(enable_lora=True, max_lora_rank=engine_max_lora_rank(lora.rank), max_loras=1,
                    enable_tower_connector_lora=lora.vision_tower)
    return args


class RolloutEngine(ActorIdentity):
    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int, device: str,
                 max_model_len: int | None = None, cpu_affinity: tuple[int, ...] = (),
                 lora: LoraConfig | None = None, sleep_mode: bool = False) -> None:
        """``max_model_len``: :func:`rl_vlm.validation.engine_max_model_len` of the run (the pool
        passes it); None = the dataclass defaults' prompt length + ``cfg.max_new_tokens`` (an
        engine built alone, as in tests). ``cpu_affinity``: ``cluster.rollout_cpu_affinity``, the
        CPUs this process is pinned to on CPU (empty = not pinned). ``lora``: ``model.lora`` (rank
        0 or None: full weights are synced). ``sleep_mode``: colocated pools (vLLM sleeps on GPU;
        on CPU, where vLLM has no sleep mode, :meth:`sleep` does nothing)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if device == "cpu":
            # First: vLLM's CPU worker reads the affinity to place its memory and threads.
            pin_to_cpus(cpu_affinity, "cluster.rollout_cpu_affinity")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gib))))
            # Before the engine exists: vLLM keeps the thread count it finds when OMP_NUM_THREADS is set.
            torch.set_num_threads(cfg.torch_threads)
        from vllm import LLM

        if max_model_len is None:
            max_model_len = DataConfig().max_prompt_length + cfg.max_new_tokens
        self.cfg = cfg
        self.max_model_len = max_model_len
        self.llm = LLM(**engine_args(model_path, cfg, seed, device, max_model_len, lora, sleep_mode))
        self.sleep_level = cfg.sleep_level if sleep_mode and device == "gpu" else 0
        self.asleep = False
        self.lora_request: LoRARequest | None = None
        """The adapter every request runs with (LoRA runs, once the first adapter is loaded)."""
        self._lora_ids = 0
        self._adapter_root = tempfile.mkdtemp(prefix="rl_vlm_lora_", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                              else None) if lora is not None and lora.rank else ""
        if device == "cpu" and torch.get_num_threads() != cfg.torch_threads:
            raise RuntimeError(f"rollout.torch_threads={cfg.torch_threads}, but vLLM left the engine at "
                               f"{torch.get_num_threads()} threads")
        self.weight_version = 0
        # A sampled vision placeholder would make the learner's image-feature count disagree with
        # the image tokens in the sequence; such tokens are never valid output, so ban them.
        tok = self.llm.get_tokenizer()
        banned = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
        ids = [tok.convert_tokens_to_ids(t) for t in banned]
        # vLLM's TokenizerLike protocol leaves out unk_token_id; the engine's HF tokenizer has it.
        unk = tok.unk_token_id  # type: ignore[attr-defined]
        self.logit_bias = {i: -100.0 for i in ids if isinstance(i, int) and i != unk}

    @staticmethod
    def _request(p: Prompt) -> TextPrompt:
        return {"prompt": p.prompt_text, "multi_modal_data": {"image": list(p.images)}}

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int | None) -> list[SampleOut]:
        """``n`` samples of every prompt, group-major. A fixed ``seed`` gives the same tokens."""
        from vllm import SamplingParams

        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0,
                                 logit_bias=self.logit_bias,
                                 seed=None if seed is None else seeds.engine_prompt(seed, i))
                  for i in range(len(prompts))]
        outs = self.llm.generate([self._request(p) for p in prompts], params, use_tqdm=False,
                                 lora_request=self.lora_request)
        samples: list[SampleOut] = []
        for out in outs:
            for c in out.outputs:
                ids = list(c.token_ids)
                # No logprobs (None) gives no lps; otherwise vLLM returns one entry per token.
                # (vLLM's FlatLogprobs types its entries Optional, as for prompt logprobs; sampled
                # tokens always have theirs.)
                lps = [float(d[t].logprob)  # type: ignore[index]
                       for d, t in zip(c.logprobs or [], ids, strict=False)]
                assert out.prompt_token_ids is not None  # set for every text prompt
                samples.append(SampleOut(list(out.prompt_token_ids), ids, lps, c.text, c.finish_reason == "length"))
        return samples

    def update_weights(self, buckets: list[list[tuple[str, torch.Tensor]]], version: int) -> int:
        """Load full (unsharded) HF-named parameters into the live engine; returns the new version.
        The tensors may be read-only views of the object store: they are read, never written."""
        self.llm.collective_rpc("rl_vlm_reload", args=(buckets,))
        return self._reloaded(version)

    def load_adapter(self, adapter: AdapterWeights, version: int) -> int:
        """LoRA: make the published adapter the one every request runs with (written to this
        engine's own directory and loaded now, so a bad adapter fails here, not mid-rollout); the
        previous adapter is unloaded and its directory removed."""
        import ray
        from vllm.lora.request import LoRARequest

        from rl_vlm.distributed.sync.adapter import write_adapter

        self._lora_ids += 1  # vLLM caches adapters by id: a new id for every version
        tensors = cast("PackedAdapter", ray.get(adapter.tensors)).tensors()
        path = write_adapter(os.path.join(self._adapter_root, f"v{self._lora_ids}"), tensors, adapter.config_json)
        request = LoRARequest(f"rl_vlm_{self._lora_ids}", self._lora_ids, path)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused the LoRA adapter of weight version {version} ({path})")
        old, self.lora_request = self.lora_request, request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        return self._reloaded(version)

    def sleep(self) -> None:
        """Colocated pools: free this engine's device memory for the learners' turn (vLLM sleep,
        ``rollout.sleep_level``); a no-op on CPU and with split pools."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
        self.asleep = True

    def wake(self, tags: list[str]) -> None:
        """Reallocate what :meth:`sleep` freed: ``["weights"]`` before a weight sync loads into
        them, then ``["kv_cache"]`` (vLLM's order for an in-place weight update)."""
        if self.sleep_level and self.asleep:
            self.llm.wake_up(tags=tags)
        if "kv_cache" in tags:
            self.asleep = False

    def _reloaded(self, version: int) -> int:
        # Cached prefixes, processed images and encoder outputs were computed by the old weights.
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.weight_version = version
        return version

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          plan: list[list[Any]]) -> list[int]:
        """Every vLLM worker of this engine joins the weight-sync group (``cluster.weight_sync=
        collective``); blocks until learner rank 0 and every other engine have joined too.
        Returns the workers' group ranks."""
        return self.llm.collective_rpc("rl_vlm_join_group", args=(host, port, rank_offset, world_size, backend, plan))

    def load_buckets(self, refs: WeightRefs, version: int) -> int:
        """Load the buckets a learner pool published to the object store (object-store weight
        sync; also how a restarted engine catches up)."""
        from rl_vlm.distributed.sync.object_store import fetch_buckets

        return self.update_weights(fetch_buckets(refs), version)

    def receive_weights(self, version: int) -> int:
        """Receive the buckets learner rank 0 broadcasts and load them (collective weight sync)."""
        self.llm.collective_rpc("rl_vlm_receive")
        return self._reloaded(version)
