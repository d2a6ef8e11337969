"""The one typed home of every knob.

Hydra composes the YAML tree under ``configs/``; :func:`load_config` converts the result once
into these frozen dataclasses and :func:`rl_vlm.validation.validate` checks it before any Ray actor starts. Every
default lives in these dataclasses (YAML only chooses and overrides), and every component receives only
its own sub-config. A variant's sub-config (``algorithm.papo`` ...) is defined and validated beside its
hooks, in ``rl_vlm/algorithms/<variant>_config.py``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

# Each variant's knobs live beside its hooks, in torch-free modules (importing them does not
# import the math); ConfigError lives in a module without imports so they can raise it too.
from rl_vlm.algorithms.care_config import CareConfig
from rl_vlm.algorithms.papo_config import PapoConfig
from rl_vlm.algorithms.rollout_correction_config import RolloutCorrectionConfig
from rl_vlm.algorithms.vogue_config import VogueConfig
from rl_vlm.algorithms.vppo_config import VppoConfig
from rl_vlm.errors import ConfigError


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the learners (PEFT): only the adapters are trained, checkpointed and
    synced to the engines; the base weights stay frozen (docs/cluster.md, "LoRA")."""

    rank: int = 0
    """Adapter rank r; 0 = no LoRA (full fine-tuning)."""
    alpha: int = 16
    """Scale numerator: the update is (alpha / rank) * B A (verl's default 16)."""
    dropout: float = 0.0
    """Dropout on the adapter's input during the update (0: the learner's log-probs equal the engine's)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Names of the linear layers that get an adapter, matched on the last name component,
    inside the language model (and, with ``vision_tower``, the ViT's blocks)."""
    vision_tower: bool = False
    """Adapters in the vision tower too (its ``attn.qkv``, ``attn.proj`` and MLP layers whose name is
    in ``target_modules``). Off by default, as in EasyR1; see docs/cluster.md for how the engine
    then takes the adapter."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = "artifacts/tiny-qwen2.5-vl"
    """Local directory or hub id of a Qwen2.5-VL checkpoint (weights, config, processor)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Learner parameter (and reference model) dtype. ``bfloat16`` on GPUs (DeepSpeed ``bf16``
    mixed precision with fp32 master weights); ``float32`` on CPU, where bf16 is refused: the CPU
    path and its engine/learner log-prob agreement are measured in fp32."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "sdpa"
    """transformers attention kernel for the learner. ``flash_attention_2`` needs a GPU, the
    optional ``flash-attn`` package and ``dtype=bfloat16`` (FA2 has no fp32 kernels). ``auto``
    (the 3B/7B configs): ``flash_attention_2`` on GPU in bf16 when ``flash_attn`` imports, else
    ``sdpa`` (:func:`rl_vlm.validation.resolve_attn_implementation`); flash-attn ships only as
    an sdist that compiles for hours, so it is not part of the GPU install."""
    min_pixels: int = 3136
    """Images are resized so that H*W >= min_pixels (Qwen2.5-VL smart resize, factor 28)."""
    max_pixels: int = 12845056
    """... and H*W <= max_pixels. Caps visual tokens per image at max_pixels / 784."""
    freeze_vision_tower: bool = False
    """Train only the language model (EasyR1's ``freeze_vision_tower``): no gradients or optimizer
    state for the whole of ``model.visual``, the ViT and its merger (~670 M parameters in
    Qwen2.5-VL-3B/7B)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (GPU runs of 3B/7B); costs about
    a third more learner compute."""
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class DataConfig:
    train_files: tuple[str, ...] = ("artifacts/easy_vqa/train.jsonl",)
    """JSONL or Parquet files of rows ``{images, problem, answer}`` (verl/EasyR1 convention)."""
    val_files: tuple[str, ...] = ("artifacts/easy_vqa/test.jsonl",)
    """Held-out rows for validation every ``trainer.val_every`` steps."""
    prompt_template: str = "think_answer"
    """Name of a template in :mod:`rl_vlm.data.prompt`."""
    rollout_batch_size: int = 8
    """Prompts per training step (each sampled ``rollout.n`` times)."""
    val_size: int = 64
    """How many validation rows are scored (the first ``val_size`` rows of ``val_files``)."""
    max_prompt_length: int = 512
    """Prompts longer than this (in tokens, image tokens included) are skipped and counted."""
    shuffle: bool = True
    """Reshuffle the training rows every epoch (seeded by ``trainer.seed``)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose ``filter_key`` values are all equal (or whose mean
    is outside (``filter_low``, ``filter_high``)) and draw further batches of prompts until
    ``rollout_batch_size`` groups are kept (see :func:`rl_vlm.driver.rollout_phase.sample_groups`)."""
    filter_key: str = "overall"
    """What dynamic sampling filters on: ``overall`` (the weighted reward) or a reward sub-score key
    (e.g. ``accuracy``, EasyR1's ``online_filtering`` choice)."""
    filter_low: float | None = None
    """Keep a group only if mean(filter_key) > filter_low (EasyR1: 0.01); None = no lower bound."""
    filter_high: float | None = None
    """Keep a group only if mean(filter_key) < filter_high (EasyR1: 0.99); None = no upper bound."""
    max_sampling_tries: int = 4
    """Generation rounds per step at most (the first included). When they are used up the batch is
    filled with the best rejected groups (largest spread of filter_key) and ``data/sampling_capped``
    is 1 for that step."""


@dataclass(frozen=True)
class RolloutConfig:
    n: int = 8
    """Responses sampled per prompt (the GRPO group size G)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    """Response length cap (``max_response_length`` in verl)."""
    num_engines: int = 1
    """vLLM engines (one Ray actor each); the prompts of a step are split across them."""
    tensor_parallel_size: int = 1
    """GPUs per engine (GPU only)."""
    gpu_memory_utilization: float = 0.85
    """Fraction of each GPU vLLM may take (weights, activations, CUDA graphs, KV cache). The rest
    holds what a weight sync adds outside vLLM's pool: the NCCL weight-sync group, one received
    bucket (``cluster.weight_sync_bucket_mb``, or the largest parameter: 1.1 GB for 7B's
    embedding) and the layer being reloaded, since the collective receive streams one bucket at
    a time into the reload. With ``cluster.colocate`` the learner shares the GPU, so keep it well
    below that."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM weight/activation dtype. ``auto`` = ``bfloat16`` on GPU, ``float32`` on CPU (to match the
    fp32 CPU learner); must be ``float32`` on CPU."""
    kv_cache_gib: float = 1.0
    """KV cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``)."""
    sleep_level: int = 1
    """Colocated GPU pools (``cluster.colocate``): what each engine frees while the learners
    update (vLLM sleep mode). 1 = the KV cache is dropped and the weights are moved to host
    memory, back on wake-up; 2 = both are dropped and the next weight sync reloads the weights
    (less host memory; a full sync only, so not with ``model.lora``)."""
    torch_threads: int = 1
    """Intra-op threads of each vLLM engine on CPU. The loop runs rollout and update one after
    the other, so an engine may take the cores the learners use during the update (on the 2-core
    box 2 threads take a 60 M model's rollout from 7.1 to 4.7 s, docs/benchmarks.md); 1 leaves
    room for other processes on a shared machine."""
    enforce_eager: bool | None = None
    """Skip CUDA-graph capture (and vLLM's torch.compile). None = per device
    (:func:`rl_vlm.validation.resolve_enforce_eager`): eager on CPU, where there is nothing to
    capture; CUDA graphs on GPU, the faster decode (the in-place weight reload copies into the
    captured tensors, so the graphs stay valid); an explicit value wins."""
    val_n: int = 1
    """Samples per validation prompt; ``val_n > 1`` also reports pass@k for k = 1..val_n."""
    val_temperature: float = 0.0
    """0 = greedy validation."""


@dataclass(frozen=True)
class LearnerConfig:
    num_ranks: int = 2
    """DeepSpeed ZeRO-3 data-parallel ranks (one Ray actor each)."""
    lr: float = 1e-6
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    """Linear warm-up of the learning rate over this many optimizer steps, then constant."""
    grad_clip: float = 1.0
    mini_batch_size: int = 8
    """Prompts per optimizer step (``global_batch_size`` in EasyR1); must divide the rollout batch."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one rank; gradients are accumulated over micro-batches."""
    max_tokens_per_micro_batch: int = 0
    """> 0: micro-batches are sized by tokens, not sequences (verl's ``use_dynamic_bsz`` with
    ``ppo_max_token_len_per_gpu``): each rank's share of a mini-batch is cut into the fewest
    micro-batches whose prompt + response tokens stay within this budget, the same number on
    every rank, sequences balanced over ranks and micro-batches by tokens
    (:mod:`rl_vlm.distributed.sharding`); ``micro_batch_size`` is then unused. The loss is
    unchanged (its denominators are the mini-batch's). Must hold the longest sequence,
    ``data.max_prompt_length + rollout.max_new_tokens``. 0: ``micro_batch_size`` sequences."""
    packing: Literal["auto", "on", "off"] = "auto"
    """``on``: no padding in the forward. A micro-batch's sequences are concatenated into one row,
    each with its own mrope positions, and attention stays within a sequence: flash-attn's varlen
    kernel, or a block-diagonal causal mask under sdpa/eager. That mask spans the whole packed
    row, so there attention costs (Σ lengths)² instead of n · T²: on CPU packing was slower than
    padding (docs/benchmarks.md section 7). ``off``: right-padded rows. ``auto``: ``on`` with
    ``flash_attention_2`` (after ``model.attn_implementation`` is resolved), else ``off``."""
    logprob_chunk_size: int = 256
    """Response positions per chunk when the learner turns hidden states into log-probs and
    entropies: the LM head and the fp32 ``[chunk, vocab]`` softmax run on this many positions at
    a time (recomputed in the backward), so the learner's memory grows with T·hidden rather than
    T·vocab. Larger chunks: fewer, larger matmuls, more memory."""
    zero_stage: int = 3
    offload_optimizer: bool = False
    """ZeRO-3 optimizer state on CPU (GPU runs)."""
    offload_params: bool = False
    torch_threads: int = 1
    """Intra-op threads per learner process on CPU (2 ranks share a 2-core box)."""
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    """Where π_old comes from. ``recompute`` (verl/EasyR1): a no-grad learner pass over the step's
    sequences before the update. ``rollout``: the log-probs vLLM returned while sampling (the
    behaviour policy's own, same weights), which skips that pass (a 60 M model's step here: 22.5
    -> 18.3 s, docs/benchmarks.md); needs rollout.temperature = 1 and top_p = 1 (vLLM reports the
    raw distribution) and an engine whose numerics match the learner's (fp32 on CPU: they agree
    to ~1e-5; bf16 vLLM vs an fp32 learner does not, so ``recompute`` stays the default)."""


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "grpo"
    """Registered algorithm (see :mod:`rl_vlm.algorithms`), or several joined by ``+`` to compose
    them (e.g. ``papo+vppo``); the README lists the valid combinations."""
    norm_adv_by_std: bool = True
    """Divide group-centred rewards by the group std (False = Dr. GRPO)."""
    adv_eps: float = 1e-6
    """epsilon in (R - mean) / (std + eps); 1e-6 in verl/EasyR1, 1e-4 in TRL."""
    clip_low: float = 0.2
    clip_high: float = 0.28
    """Clip-higher (DAPO): ratio clipped to [1 - clip_low, 1 + clip_high]."""
    clip_dual: float = 3.0
    """Dual-clip constant C for negative advantages; 0 disables it."""
    kl_coef: float = 0.0
    """beta of the KL-to-reference loss term; 0 = no reference model is loaded."""
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k3"
    """k1 = log-ratio, k2 = half squared log-ratio, k3 = low-variance KL (DeepSeekMath)."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                      "seq-mean-token-sum-norm"] = "token-mean"
    entropy_coef: float = 0.0
    """Coefficient of the exact full-vocabulary entropy bonus (``loss -= coef * H``)."""
    # Each variant's knobs, validated when built (rl_vlm/algorithms/<variant>_config.py).
    papo: PapoConfig = field(default_factory=PapoConfig)
    vppo: VppoConfig = field(default_factory=VppoConfig)
    care: CareConfig = field(default_factory=CareConfig)
    vogue: VogueConfig = field(default_factory=VogueConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    """Importance weights between the engine's (behaviour) and the learner's (proximal)
    log-probs, for stale samples and the engine/learner mismatch (TIS / MIS)."""


@dataclass(frozen=True)
class RewardFunctionConfig:
    name: str = "accuracy"
    """A registered reward (see :mod:`rl_vlm.rewards`) or a user function ``file.py:fn`` / ``module:fn``."""
    weight: float = 1.0
    """Weight of this function's ``score`` in the overall reward (sub-scores of a dict are only logged)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the function on every call; checked against its signature at start-up."""
    key: str = ""
    """Name of its sub-score (``reward/<key>``); empty = ``name``. Lets one function appear twice with
    different kwargs, or different tasks log their own accuracy function under one key."""


@dataclass(frozen=True)
class RewardConfig:
    functions: tuple[RewardFunctionConfig, ...] = (
        RewardFunctionConfig(name="format", weight=0.1),
        RewardFunctionConfig(name="accuracy", weight=0.9),
    )
    """The default function set: the overall reward is the weighted sum; each sub-score is logged as
    ``reward/<key>``. Used for every row that :attr:`by_task` does not route elsewhere."""
    accuracy_key: str = "accuracy"
    """Which sub-score is reported as the accuracy metric (and pass@k in validation)."""
    by_task: dict[str, tuple[RewardFunctionConfig, ...]] = field(default_factory=dict)
    """Named function sets for mixed-task data. A row with a ``reward`` field uses ``by_task[row["reward"]]``
    (an unknown name scores 0 and counts an error); else a row whose ``task`` is a key uses that set;
    else :attr:`functions`."""
    num_workers: int = 0
    """Reward worker processes; 0 = score serially in the driver (no timeout). With workers, a call that
    runs past :attr:`timeout_s` is killed (its worker replaced) and scores 0 as an error."""
    timeout_s: float = 10.0
    """Per-call time limit (one function on one sample) when ``num_workers > 0``."""
    max_consecutive_errors: int = 16
    """Circuit breaker: after this many failures in a row of one configured function (raised, invalid
    or non-finite score, timeout; a success resets its count), :attr:`on_repeated_errors` applies.
    0 = never trip (every failure scores 0 and is counted, as before)."""
    on_repeated_errors: Literal["disable", "stop"] = "disable"
    """``disable``: the function is never called again by this reward manager (the run, or the
    curriculum stage) and scores 0; one WARNING names it and its last error, and the driver's
    ``reward/disabled`` counts disabled functions. ``stop``: raise RuntimeError, ending the run."""

    def __post_init__(self) -> None:
        # Hydra hands the by_task values over as lists of plain dicts; the generic converter does not
        # descend into dict values, so they are typed here (and ConfigError names the key).
        sets = {}
        for task, fns in self.by_task.items():
            if isinstance(fns, (str, bytes)) or not isinstance(fns, (list, tuple)):
                raise ConfigError(f"reward.by_task.{task}: expected a list of reward functions, got {fns!r}")
            sets[str(task)] = tuple(
                f if isinstance(f, RewardFunctionConfig)
                else _convert(RewardFunctionConfig, f, f"reward.by_task.{task}[{i}]")
                for i, f in enumerate(fns))
        object.__setattr__(self, "by_task", sets)
        if self.num_workers < 0:
            raise ConfigError(f"reward.num_workers: must be >= 0, got {self.num_workers}")
        if not self.timeout_s > 0:
            raise ConfigError(f"reward.timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_consecutive_errors < 0:
            raise ConfigError(f"reward.max_consecutive_errors: must be >= 0 (0 = never trip), "
                              f"got {self.max_consecutive_errors}")
        # The YAML path is checked by the Literal type already; this covers direct construction.
        if self.on_repeated_errors not in ("disable", "stop"):
            raise ConfigError(f"reward.on_repeated_errors: {self.on_repeated_errors!r} is not one of "
                              "['disable', 'stop']")


@dataclass(frozen=True)
class DataSourceConfig:
    """One source of a curriculum stage's data mixture: files, or a task of ``data.train_files``."""

    files: tuple[str, ...] = ()
    """JSONL/Parquet files (relative to the working directory, like ``data.train_files``)."""
    task: str = ""
    """Instead of ``files``: the rows of ``data.train_files`` whose ``task`` field equals this."""
    weight: float = 1.0
    """Share of the stage's prompts drawn from this source (normalised over the stage's sources)."""


@dataclass(frozen=True)
class StageConfig:
    """One curriculum stage (Curr-ReFT, algorithms.md §6): data mixture, rewards and length."""

    name: str = ""
    """Shown in the console line at the switch; empty = ``stage<i>``."""
    type: Literal["rl", "sft"] = "rl"
    """``rl``: training steps of the configured algorithm; ``sft``: rejection-sampling
    self-improvement: sample with the current policy, keep the responses whose accuracy sub-score is
    >= ``sft_threshold`` and take a supervised step (token-mean NLL) on them."""
    steps: int = 0
    """Length in training steps; set exactly one of ``steps`` and ``epochs``."""
    epochs: float = 0.0
    """Length in passes over the stage's rows: ceil(epochs * rows / data.rollout_batch_size) steps."""
    sources: tuple[DataSourceConfig, ...] = ()
    """The stage's data mixture; empty = ``data.train_files``."""
    reward: RewardConfig | None = None
    """The stage's reward functions and per-task routing (``functions``, ``by_task``,
    ``accuracy_key``); None = the run's ``reward``. ``num_workers``/``timeout_s`` are always the
    run's."""
    reward_set: str = ""
    """Instead of ``reward``: a set of the run's ``reward.by_task`` that scores every row of the
    stage (no routing)."""
    prompt_template: str = ""
    """Prompt template of the stage's rows; empty = ``data.prompt_template``."""
    sft_threshold: float = 1.0
    """``sft`` stages: keep responses whose accuracy sub-score is >= this."""


@dataclass(frozen=True)
class DifficultyConfig:
    """Difficulty-aware sampling: an online pass-rate estimate per row uid or per task, used to
    favour the learnable frontier (pass rate near 0.5); see :mod:`rl_vlm.driver.curriculum`."""

    mode: Literal["off", "uid", "task"] = "off"
    """``uid``: one estimate per row (its ``uid``); ``task``: one per ``task`` field (else per
    source); ``off``: uniform sampling (weights of the sources only)."""
    ema: float = 0.5
    """p <- (1 - ema) * p + ema * pass_rate of the newest group; the first group sets p."""
    floor: float = 0.1
    """A candidate row is kept with probability floor + (1 - floor) * 4 p (1 - p): 1 at p = 0.5
    and for unseen rows, ``floor`` at p = 0 or 1."""


@dataclass(frozen=True)
class CurriculumConfig:
    """A staged curriculum (``configs/curriculum/*.yaml``); no stages = one implicit stage over
    ``data.train_files`` with the run's ``reward`` (today's behaviour)."""

    name: str = "none"
    stages: tuple[StageConfig, ...] = ()
    """Ordered stages; the run moves on at each stage's length; the last one runs until
    ``trainer.total_steps``."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)


@dataclass(frozen=True)
class ClusterConfig:
    address: str = "local"
    """``local`` starts a private Ray instance; ``auto`` or ``ray://host:port`` joins an existing one."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """``auto`` = GPU if torch sees one, else CPU. Selects bundles, backend and weight-sync path."""
    num_cpus: int = 0
    """Logical CPUs for a local Ray instance; 0 = enough for the pools."""
    rollout_cpus_per_engine: int = 1
    learner_cpus_per_rank: int = 1
    gpus_per_node: int = 8
    """GPU layout only: used to check that the pools fit."""
    num_nodes: int = 1
    """GPU layout only: nodes in the Ray cluster that the pools may use."""
    colocate: bool = False
    """Rollout engines and learner ranks share the same devices and take turns: engine k and
    learner rank(s) k*tp .. k*tp+tp-1 sit in the same placement-group bundles, so
    ``rollout.num_engines * rollout.tensor_parallel_size`` must equal ``learner.num_ranks``
    (:mod:`rl_vlm.distributed.placement`). On GPU the engines sleep while the learners work
    (``rollout.sleep_level``) and the layout must fit ``gpu_memory_gib`` (checked at validation);
    on CPU the two pools share the bundles' cores. Needs ``trainer.max_staleness=0``."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU, for the fits-in-memory check of colocated layouts (docs/cluster.md)."""
    rollout_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources in every rollout bundle, e.g. ``{rollout_node: 1}`` with a custom
    resource that only some nodes advertise (``ray start --resources``): pins the pool to them."""
    learner_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources in every learner bundle (as ``rollout_resources``)."""
    rollout_cpu_affinity: tuple[int, ...] = ()
    """CPU only: the logical CPU ids every rollout engine's process is pinned to
    (``os.sched_setaffinity`` at actor start, before torch's and vLLM's threads start), e.g.
    ``[0]`` with ``learner_cpu_affinity=[1]`` to give the two pools disjoint cores on a 2-core box;
    ``rollout.torch_threads`` threads then share these CPUs. Empty = not pinned."""
    learner_cpu_affinity: tuple[int, ...] = ()
    """CPU only: the logical CPU ids every learner rank's process is pinned to (as
    ``rollout_cpu_affinity``; all ranks share the set). Empty = not pinned."""
    weight_sync: Literal["auto", "object_store", "collective"] = "auto"
    """How the learner's weights reach the engines after each update (:mod:`rl_vlm.distributed.sync`):
    ``object_store`` = every learner rank puts its ZeRO-3 partition of each bucket in Ray's object
    store and every engine fetches and concatenates them;
    ``collective`` = rank 0 broadcasts each bucket to every vLLM worker through a process group of
    their own (nccl on GPU, gloo on CPU); ``auto`` = collective on GPU, object_store on CPU."""
    weight_sync_bucket_mb: int = 64
    """Size of a weight-sync bucket (MiB of full parameters): parameters are put or gathered, sent
    and received this many at a time (a larger parameter gets a bucket of its own)."""
    log_to_driver: bool = False
    """Stream every actor's stdout/stderr (vLLM and DeepSpeed logs) to the driver's console. Off,
    they go to Ray's session logs (``/tmp/ray/session_latest/logs``); actor errors are raised
    in the driver either way."""


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = 20
    seed: int = 1
    output_dir: str = "runs/default"
    """Run directory: ``metrics.jsonl``, the resolved config, checkpoints."""
    val_every: int = 5
    """Validate on ``data.val_files`` every N steps (and before the first and after the last step); 0 = never."""
    val_before_train: bool = True
    log_every: int = 1
    progress_bar: bool = True
    wandb_mode: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "rl-vlm"
    wandb_run_name: str = ""
    """Empty = the basename of ``output_dir``."""
    save_final_model: bool = False
    """Write a Hugging Face directory of the final policy to ``<output_dir>/final``."""
    save_every: int = 0
    """Checkpoint every N steps (and on SIGTERM/Ctrl-C and at the end); 0 = only at those two."""
    keep_last: int = 2
    """Complete checkpoints kept under ``<output_dir>/checkpoints``; older ones are pruned after a
    new one is complete. 0 = keep all."""
    resume: str = "auto"
    """``auto``: continue from the newest complete checkpoint in ``output_dir`` if there is one;
    ``off``: start fresh (refused if checkpoints exist, so a run is never silently overwritten);
    or a checkpoint / run directory path."""
    max_staleness: int = 0
    """Rollout batches sampled ahead of the update: 0 = the synchronous loop (sample, then
    update); k >= 1 = the engines sample the batches of steps t+1 .. t+k while the learners update
    on step t's, so a sample is trained on k weight versions after the one that sampled it (see
    the README, "Asynchronous rollout")."""
    max_restarts: int = 2
    """A dead learner rank makes the driver restart the whole system from the newest checkpoint
    at most this many times before it stops with a message; dead rollout engines are restarted
    in place without counting."""
    seed_per_run: bool = False
    """Multirun (``rl-vlm train -m``): False = every run uses ``seed`` (runs differ only in the swept
    keys); True = run number j uses ``seed + j``. See docs/sweeps.md."""
    sweep_metric: str = "val/accuracy"
    """Multirun: the metrics.jsonl key whose last value ranks the runs in the sweep summary."""
    sweep_mode: Literal["max", "min"] = "max"
    """Multirun: rank by the largest (``max``) or smallest (``min``) ``sweep_metric``."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# --------------------------------------------------------------------------------------------
# Conversion: plain dict (from Hydra/OmegaConf) -> frozen dataclasses, with key-naming errors.
# --------------------------------------------------------------------------------------------

def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass type, not an instance
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis:
                value = [value]  # a single file name where a list is expected
            else:
                raise ConfigError(f"{key}: expected a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"unknown config key '{where}' (valid keys here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain (YAML/JSON-able) form of a config; inverse of :func:`from_dict`."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# --------------------------------------------------------------------------------------------
# Validation: everything that can be checked before an actor starts.
# --------------------------------------------------------------------------------------------
