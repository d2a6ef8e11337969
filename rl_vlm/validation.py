"""Checks on the typed config (:mod:`rl_vlm.config`) before any actor starts, and the
device-dependent choices resolved from it (device, rollout dtype, eager mode, attention kernel,
engine length). :func:`validate` raises :class:`ConfigError` naming the first offending key; it
never changes a value (defaults live only in the dataclasses).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal
from urllib.parse import urlparse

from rl_vlm.config import Config, ConfigError, ModelConfig

AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2"]
"""``model.attn_implementation``'s choices."""

PIXELS_PER_VISUAL_TOKEN = 28 * 28
"""Qwen2.5-VL: 14-px patches merged 2x2, so one visual token per 28x28 pixels (an image resized
to at least ``model.min_pixels`` gives at least ``min_pixels / 784`` tokens)."""


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config, check_paths: bool = True) -> Config:
    """Raise ConfigError naming the first offending key; return ``cfg`` unchanged otherwise."""
    d, r, lc, a, c, t = cfg.data, cfg.rollout, cfg.learner, cfg.algorithm, cfg.cluster, cfg.trainer
    _require(d.rollout_batch_size > 0, "data.rollout_batch_size", "must be positive")
    _require(r.n >= 2, "rollout.n", f"GRPO needs at least 2 samples per prompt, got {r.n}")
    _require(r.max_new_tokens > 0, "rollout.max_new_tokens", "must be positive")
    _require(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization",
             f"must be in (0, 1], got {r.gpu_memory_utilization}")
    _require(c.weight_sync_bucket_mb > 0, "cluster.weight_sync_bucket_mb", "must be positive")
    _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _require(r.temperature > 0, "rollout.temperature", "must be > 0 for sampling rollouts")
    _require(r.num_engines >= 1, "rollout.num_engines", "must be >= 1")
    _require(r.torch_threads >= 1, "rollout.torch_threads", f"must be >= 1, got {r.torch_threads}")
    _require(lc.torch_threads >= 1, "learner.torch_threads", f"must be >= 1, got {lc.torch_threads}")
    _require(r.val_n >= 1, "rollout.val_n", "must be >= 1")
    _require(r.val_n == 1 or r.val_temperature > 0, "rollout.val_temperature",
             f"rollout.val_n={r.val_n} samples need val_temperature > 0 (greedy samples are identical)")
    _require(lc.num_ranks >= 1, "learner.num_ranks", "must be >= 1")
    _require(lc.zero_stage in (0, 1, 2, 3), "learner.zero_stage", f"must be 0..3, got {lc.zero_stage}")
    _require(lc.lr > 0, "learner.lr", "must be positive")
    _require(lc.mini_batch_size > 0 and d.rollout_batch_size % lc.mini_batch_size == 0, "learner.mini_batch_size",
             f"{lc.mini_batch_size} must divide data.rollout_batch_size={d.rollout_batch_size}")
    seqs = lc.mini_batch_size * r.n
    _require(seqs % lc.num_ranks == 0, "learner.num_ranks",
             f"a mini-batch of {lc.mini_batch_size} prompts x rollout.n={r.n} = {seqs} sequences "
             f"does not split evenly over {lc.num_ranks} ranks")
    per_rank = seqs // lc.num_ranks
    _require(lc.max_tokens_per_micro_batch > 0 or
             (lc.micro_batch_size > 0 and per_rank % lc.micro_batch_size == 0), "learner.micro_batch_size",
             f"{lc.micro_batch_size} must divide the {per_rank} sequences each rank gets per mini-batch "
             f"(learner.mini_batch_size * rollout.n / learner.num_ranks)")
    longest = d.max_prompt_length + r.max_new_tokens
    _require(lc.max_tokens_per_micro_batch == 0 or lc.max_tokens_per_micro_batch >= longest,
             "learner.max_tokens_per_micro_batch",
             f"{lc.max_tokens_per_micro_batch} tokens cannot hold the longest sequence, data.max_prompt_length + "
             f"rollout.max_new_tokens = {longest}; raise it (or 0: micro_batch_size sequences)")
    _require(lc.old_logprobs == "recompute" or (r.temperature == 1.0 and r.top_p == 1.0), "learner.old_logprobs",
             f"'rollout' needs rollout.temperature=1 and rollout.top_p=1 (vLLM returns log-probs of the raw "
             f"distribution), got temperature={r.temperature}, top_p={r.top_p}; use 'recompute'")
    _require(d.rollout_batch_size % r.num_engines == 0 or d.rollout_batch_size >= r.num_engines,
             "rollout.num_engines", f"{r.num_engines} engines for {d.rollout_batch_size} prompts")
    _require(a.clip_low >= 0 and a.clip_high >= 0, "algorithm.clip_low", "clip ranges must be >= 0")
    _require(a.clip_dual == 0 or a.clip_dual > 1, "algorithm.clip_dual", "must be 0 (off) or > 1")
    _require(a.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
    # Imported here: keeps this module free of torch until called. The name, the composition and
    # the class-level checks, without building the algorithm (the variant sub-configs validated
    # themselves when they were built).
    from rl_vlm.algorithms import check_config

    check_config(a)
    _require(len(cfg.reward.functions) > 0, "reward.functions", "at least one reward function is required")
    # Imported here: keeps this module import-light. User reward code is imported only with
    # check_paths: like data files, it may live on another machine.
    from rl_vlm.rewards.checks import check_reward_config

    check_reward_config(cfg.reward, "reward", resolve_user_code=check_paths)
    for i, s in enumerate(cfg.curriculum.stages):
        if s.reward is not None:
            check_reward_config(s.reward, f"curriculum.stages[{i}].reward", resolve_user_code=check_paths)
    _require(cfg.model.min_pixels <= cfg.model.max_pixels, "model.min_pixels", "must be <= model.max_pixels")
    # Every row has an image, and an image has at least min_pixels / 784 tokens: a shorter limit
    # rejects every row ("every row ... is bad") after the system has started.
    min_image_tokens = cfg.model.min_pixels // PIXELS_PER_VISUAL_TOKEN
    _require(d.max_prompt_length > min_image_tokens, "data.max_prompt_length",
             f"{d.max_prompt_length} tokens cannot hold one image at model.min_pixels={cfg.model.min_pixels} "
             f"({min_image_tokens} visual tokens) plus the question; every row would be skipped")
    _require(t.total_steps >= 0, "trainer.total_steps", "must be >= 0")
    _require(t.val_every >= 0, "trainer.val_every", "must be >= 0")
    _require(t.save_every >= 0, "trainer.save_every", "must be >= 0")
    _require(t.keep_last >= 0, "trainer.keep_last", "must be >= 0")
    _require(t.max_restarts >= 0, "trainer.max_restarts", "must be >= 0")
    _require(t.max_staleness >= 0, "trainer.max_staleness", f"must be >= 0 (0 = synchronous), got {t.max_staleness}")
    # Stages switch sampler, rewards and step kind at a step boundary; batches sampled ahead
    # would come from the previous stage (or be RL batches for an SFT stage).
    _require(t.max_staleness == 0 or not cfg.curriculum.stages, "trainer.max_staleness",
             f"{t.max_staleness} cannot run a staged curriculum (curriculum.stages has "
             f"{len(cfg.curriculum.stages)}): batches sampled ahead would cross a stage boundary; use 0")
    _require(a.rollout_correction.mode == "none" or lc.old_logprobs == "recompute", "algorithm.rollout_correction.mode",
             f"{a.rollout_correction.mode!r} needs learner.old_logprobs=recompute: with 'rollout' the proximal "
             f"policy is the behaviour policy and every weight is 1")
    m = cfg.model
    _require(r.sleep_level in (1, 2), "rollout.sleep_level", f"must be 1 or 2, got {r.sleep_level}")
    _require(not c.colocate or t.max_staleness == 0, "trainer.max_staleness",
             f"{t.max_staleness} needs the engines to sample while the learners update, but colocated pools "
             f"(cluster.colocate) take turns on the same devices; use 0")
    _validate_lora(cfg)
    _require(not lc.offload_params or lc.zero_stage == 3, "learner.offload_params",
             f"parameter offload needs learner.zero_stage=3, got {lc.zero_stage}")
    _require(not lc.offload_optimizer or lc.zero_stage >= 1, "learner.offload_optimizer",
             "optimizer offload needs learner.zero_stage >= 1")
    device = resolve_device(c.device)
    if device == "gpu":
        from rl_vlm.distributed.placement import (
            plan_gpus,  # here: placement imports this module
        )

        plan_gpus(num_nodes=c.num_nodes, gpus_per_node=c.gpus_per_node, num_engines=r.num_engines,
                  tensor_parallel_size=r.tensor_parallel_size, num_ranks=lc.num_ranks, colocate=c.colocate,
                  rollout_cpus_per_engine=c.rollout_cpus_per_engine, learner_cpus_per_rank=c.learner_cpus_per_rank)
        if c.colocate:
            # An engine actor sees only its own bundle's GPU; a TP group would need tp of them.
            _require(r.tensor_parallel_size == 1, "rollout.tensor_parallel_size",
                     f"colocated engines run TP 1 (an engine shares one GPU with one learner rank), got "
                     f"{r.tensor_parallel_size}; use rollout.num_engines=learner.num_ranks={lc.num_ranks}")
            _require(c.weight_sync != "collective", "cluster.weight_sync",
                     "'collective' cannot run colocated (NCCL refuses two members of one group on the same GPU); "
                     "use auto or object_store")
            _require(not (m.lora.rank and r.sleep_level == 2), "rollout.sleep_level",
                     "2 drops the engines' base weights, but a LoRA sync sends only the adapter; use 1")
            _check_colocated_memory(cfg)
        _require(m.attn_implementation != "flash_attention_2" or m.dtype == "bfloat16", "model.attn_implementation",
                 f"flash_attention_2 needs model.dtype=bfloat16 (no fp32 kernels), got {m.dtype}")
    else:
        _require(r.tensor_parallel_size == 1, "rollout.tensor_parallel_size", "must be 1 on CPU")
        _require(m.attn_implementation != "flash_attention_2", "model.attn_implementation",
                 "flash_attention_2 needs a GPU; use sdpa on CPU")
        _require(m.dtype == "float32", "model.dtype",
                 f"{m.dtype} is not supported on CPU (the CPU path is built and measured in float32); use float32")
        _require(r.dtype in ("auto", "float32"), "rollout.dtype",
                 f"{r.dtype} is not supported on CPU (the engine must match the float32 learner); use auto or float32")
        _require(not c.colocate or r.num_engines == lc.num_ranks, "rollout.num_engines",
                 f"colocated pools put engine k beside learner rank k: rollout.num_engines={r.num_engines} "
                 f"must equal learner.num_ranks={lc.num_ranks}")
    if c.address == "local" and c.num_cpus:
        need = r.num_engines * c.rollout_cpus_per_engine + lc.num_ranks * c.learner_cpus_per_rank
        _require(need <= c.num_cpus, "cluster.num_cpus",
                 f"pools need {need} CPUs (rollout {r.num_engines} x {c.rollout_cpus_per_engine} + "
                 f"learner {lc.num_ranks} x {c.learner_cpus_per_rank}) but cluster.num_cpus={c.num_cpus}")
    _validate_sampling(cfg, check_paths)
    if check_paths:
        _require(os.path.isdir(cfg.model.path) or _looks_like_hub_id(cfg.model.path), "model.path",
                 f"{cfg.model.path!r} is not a directory (build the tiny model with `rl-vlm build-tiny-model`)")
        _validate_machine(cfg, device)
        for i, f in enumerate(d.train_files + d.val_files):
            key = "data.train_files" if i < len(d.train_files) else "data.val_files"
            _require(os.path.exists(f), key, f"{f!r} does not exist (create easy-VQA files with `rl-vlm prepare-data`)")
    check_cpu_affinity(cfg, this_machine=check_paths)
    return cfg


def _validate_machine(cfg: Config, device: str) -> None:
    """What depends on this machine (run with ``check_paths``; a config may be written for
    another one): the model's own length limit, the GPUs of a private Ray instance, wandb
    credentials."""
    limit = model_max_length(cfg.model.path)
    need = engine_max_model_len(cfg)
    _require(limit is None or need <= limit, "data.max_prompt_length",
             f"data.max_prompt_length + rollout.max_new_tokens = {cfg.data.max_prompt_length} + "
             f"{cfg.rollout.max_new_tokens} = {need} exceeds the model's max_position_embeddings={limit} "
             f"({cfg.model.path}/config.json)")
    c, r, lc = cfg.cluster, cfg.rollout, cfg.learner
    # Only a private instance is bound to this machine's GPUs; a joined cluster's are counted
    # once Ray is up (rl_vlm.distributed.runtime.check_cluster_gpus).
    if device == "gpu" and c.address == "local":
        have = visible_gpus()
        want = lc.num_ranks if c.colocate else r.num_engines * r.tensor_parallel_size + lc.num_ranks
        _require(have > 0, "cluster.device",
                 "gpu, but torch sees no CUDA device on this machine (check nvidia-smi, CUDA_VISIBLE_DEVICES and "
                 "that torch is a CUDA build: python -c 'import torch; print(torch.version.cuda)'); "
                 "use cluster.device=cpu or auto")
        needs = (f"learner.num_ranks={lc.num_ranks}, colocated" if c.colocate else
                f"rollout.num_engines={r.num_engines} x rollout.tensor_parallel_size={r.tensor_parallel_size} "
                f"+ learner.num_ranks={lc.num_ranks}")
        _require(want <= have, "cluster.device",
                 f"gpu with a private Ray instance (cluster.address=local), but the pools need {want} GPUs "
                 f"({needs}) and this machine has {have}; with {have} GPU(s) colocate the pools: "
                 f"cluster=single_gpu, or cluster.colocate=true rollout.num_engines={have} learner.num_ranks={have} "
                 "(docs/cluster.md)")
    if cfg.trainer.wandb_mode == "online":
        _require(wandb_credentials(), "trainer.wandb_mode",
                 f"online, but no wandb credentials were found (no WANDB_API_KEY and no {_wandb_host()} entry in "
                 "~/.netrc): set WANDB_API_KEY or run `wandb login`, or use trainer.wandb_mode=offline "
                 "(`wandb sync <output_dir>/wandb` uploads it later)")


def _validate_sampling(cfg: Config, check_paths: bool) -> None:
    """Dynamic sampling (``data.*``) and the curriculum (``curriculum.*``)."""
    d, cur = cfg.data, cfg.curriculum
    _require(d.max_sampling_tries >= 1, "data.max_sampling_tries", f"must be >= 1, got {d.max_sampling_tries}")
    if d.filter_low is not None and d.filter_high is not None:
        _require(d.filter_low < d.filter_high, "data.filter_low",
                 f"{d.filter_low} must be < data.filter_high={d.filter_high}")
    if d.dynamic_sampling:
        from rl_vlm.algorithms import algorithm_class

        _require(not algorithm_class(cfg.algorithm.name).has_rollout_views(cfg.algorithm), "data.dynamic_sampling",
                 f"algorithm {cfg.algorithm.name} samples extra rollout-view groups per prompt; "
                 "dynamic sampling filters plain groups only")
    diff = cur.difficulty
    _require(0 < diff.ema <= 1, "curriculum.difficulty.ema", f"must be in (0, 1], got {diff.ema}")
    _require(0 < diff.floor <= 1, "curriculum.difficulty.floor", f"must be in (0, 1], got {diff.floor}")
    from rl_vlm.data.prompt import TEMPLATES  # here: keeps this module import-light

    for i, s in enumerate(cur.stages):
        key = f"curriculum.stages[{i}]"
        _require((s.steps > 0) != (s.epochs > 0), f"{key}.steps",
                 f"stage {s.name or i!r} needs exactly one positive length: steps={s.steps}, epochs={s.epochs}")
        _require(s.steps >= 0 and s.epochs >= 0, f"{key}.steps", "lengths must be >= 0")
        _require(not (s.reward is not None and s.reward_set), f"{key}.reward_set",
                 "set either reward or reward_set, not both")
        if s.reward_set:
            _require(s.reward_set in cfg.reward.by_task, f"{key}.reward_set",
                     f"{s.reward_set!r} is not a set of reward.by_task (sets: {sorted(cfg.reward.by_task)})")
        funcs = (cfg.reward.by_task[s.reward_set] if s.reward_set else
                 s.reward.functions if s.reward is not None else cfg.reward.functions)
        acc = s.reward.accuracy_key if s.reward is not None else cfg.reward.accuracy_key
        _require(acc == cfg.reward.accuracy_key, f"{key}.reward.accuracy_key",
                 f"must equal reward.accuracy_key={cfg.reward.accuracy_key!r} (validation and metrics use it)")
        _require(any((f.key or f.name) == acc for f in funcs), f"{key}.reward",
                 f"the stage's default function set has no function with key {acc!r} (reward.accuracy_key)")
        _require(not s.prompt_template or s.prompt_template in TEMPLATES, f"{key}.prompt_template",
                 f"unknown template {s.prompt_template!r}; known: {sorted(TEMPLATES)}")
        _require(s.type == "rl" or 0 <= s.sft_threshold, f"{key}.sft_threshold", "must be >= 0")
        if s.sources:
            _require(sum(src.weight for src in s.sources) > 0, f"{key}.sources",
                     f"weights {[src.weight for src in s.sources]} must sum to > 0")
        for j, src in enumerate(s.sources):
            skey = f"{key}.sources[{j}]"
            _require(src.weight >= 0, f"{skey}.weight", f"must be >= 0, got {src.weight}")
            _require(bool(src.files) != bool(src.task), skey,
                     f"give either files or task, got files={list(src.files)} task={src.task!r}")
            if check_paths:
                for f in src.files:
                    _require(os.path.exists(f), f"{skey}.files", f"{f!r} does not exist")


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/")) and not path.startswith("artifacts")


def resolve_rollout_dtype(dtype: str, device: str) -> str:
    """``rollout.dtype`` for vLLM: ``auto`` -> ``bfloat16`` on GPU, ``float32`` on CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "gpu" else "float32"


def resolve_enforce_eager(enforce_eager: bool | None, device: str) -> bool:
    """``rollout.enforce_eager``: None -> eager on CPU (nothing to capture), CUDA graphs on GPU."""
    return device != "gpu" if enforce_eager is None else enforce_eager


def resolve_attn_implementation(attn: AttnImplementation, device: str, dtype: str) -> AttnImplementation:
    """``model.attn_implementation`` for transformers: ``auto`` -> ``flash_attention_2`` on GPU in
    bf16 when the optional ``flash_attn`` package imports, else ``sdpa``; others are kept."""
    if attn != "auto":
        return attn
    import importlib.util

    if device == "gpu" and dtype == "bfloat16" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def resolve_model(model: ModelConfig, device: str) -> ModelConfig:
    """``model`` as the learner ranks get it: ``attn_implementation`` resolved
    (:func:`resolve_attn_implementation`) on the driver, whose environment every node shares
    (one image or lock file everywhere, docs/cluster.md)."""
    attn = resolve_attn_implementation(model.attn_implementation, device, model.dtype)
    return model if attn == model.attn_implementation else dataclasses.replace(model, attn_implementation=attn)


def engine_max_model_len(cfg: Config) -> int:
    """vLLM's ``max_model_len``: the longest prompt the data layer lets through plus the longest
    response. Longer prompts are skipped by the data layer, so none reaches the engine."""
    return cfg.data.max_prompt_length + cfg.rollout.max_new_tokens


def model_max_length(path: str) -> int | None:
    """The checkpoint's own position limit (``max_position_embeddings``, top-level or in
    ``text_config``, as vLLM derives its default ``max_model_len``), from ``path/config.json``;
    None when ``path`` is not a local directory (a hub id) or a RoPE scaling factor stretches the
    limit (vLLM's own rules then apply): vLLM checks those at start."""
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        hf = json.load(fh)
    for node in (hf, hf.get("text_config") or {}):
        if isinstance(node.get("max_position_embeddings"), int):
            if "factor" in (node.get("rope_scaling") or {}):
                return None
            return int(node["max_position_embeddings"])
    return None


def visible_gpus() -> int:
    """CUDA devices torch sees on this machine (0 without a CUDA build or a driver)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"


def wandb_credentials() -> bool:
    """wandb can log in without a prompt: ``WANDB_API_KEY``, or a netrc entry (``$NETRC`` or
    ``~/.netrc``, what ``wandb login`` writes) for the API host (``WANDB_BASE_URL``, default
    api.wandb.ai)."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(_wandb_host())
    except (OSError, netrc.NetrcParseError):
        return False
    return entry is not None and bool(entry[2])


def _validate_lora(cfg: Config) -> None:
    from rl_vlm.models.lora import VLLM_LORA_RANKS

    lora = cfg.model.lora
    _require(0 <= lora.rank <= VLLM_LORA_RANKS[-1], "model.lora.rank",
             f"must be 0 (off) .. {VLLM_LORA_RANKS[-1]} (vLLM's largest LoRA rank), got {lora.rank}")
    if not lora.rank:
        return
    _require(lora.alpha > 0, "model.lora.alpha", f"must be > 0, got {lora.alpha}")
    _require(0 <= lora.dropout < 1, "model.lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    _require(len(lora.target_modules) > 0, "model.lora.target_modules", "name at least one linear layer")
    _require(cfg.cluster.weight_sync != "collective", "cluster.weight_sync",
             "a LoRA run syncs only the adapter, through the object store; use auto or object_store")


def _check_colocated_memory(cfg: Config) -> None:
    """The colocated layout must fit ``cluster.gpu_memory_gib`` (:mod:`rl_vlm.distributed.memory`);
    models whose shape is unknown here (not a local directory, not a listed hub id) are not checked."""
    from rl_vlm.algorithms import build_algorithm
    from rl_vlm.distributed.memory import check_colocated_fits
    from rl_vlm.models.shape import model_shape

    shape = model_shape(cfg.model.path)
    if shape is not None:
        algorithm = build_algorithm(cfg.algorithm)
        check_colocated_fits(cfg, shape, needs_reference=algorithm.needs_reference,
                             needs_ema_reference=algorithm.ema_reference() is not None)


def resolve_device(device: str) -> str:
    """``auto`` -> ``gpu`` if torch sees a CUDA device, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def check_cpu_affinity(cfg: Config, this_machine: bool = True) -> None:
    """``cluster.rollout_cpu_affinity`` and ``cluster.learner_cpu_affinity``: CPU only, distinct
    ids >= 0; with ``this_machine`` and a private Ray instance (``cluster.address=local``, whose
    actors run here with this process's affinity) every id must be a CPU this process may run on
    (``os.sched_getaffinity``; ``os.cpu_count`` where there is no such call)."""
    c = cfg.cluster
    for key, cpus in (("cluster.rollout_cpu_affinity", c.rollout_cpu_affinity),
                      ("cluster.learner_cpu_affinity", c.learner_cpu_affinity)):
        if not cpus:
            continue
        _require(resolve_device(c.device) == "cpu", key,
                 f"{list(cpus)} pins CPU actors only; leave it empty on GPU (cluster.device={c.device})")
        _require(min(cpus) >= 0, key, f"CPU ids are >= 0, got {list(cpus)}")
        _require(len(set(cpus)) == len(cpus), key, f"names a CPU twice: {list(cpus)}")
        if this_machine and c.address == "local":
            usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
            missing = sorted(set(cpus) - usable)
            _require(not missing, key, f"CPU(s) {missing} do not exist or are not available here: this machine "
                                       f"lets the pools use CPUs {sorted(usable)}")
