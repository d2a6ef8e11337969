"""Does a colocated GPU layout fit? Per-GPU memory arithmetic for one learner rank beside one
sleeping vLLM engine (``cluster.colocate=true``), checked at validation, before any actor starts.

With colocated pools every GPU holds learner rank r (DeepSpeed ZeRO) and engine r (vLLM, TP 1), and
the two take turns. Two phases matter:

* **rollout**: the engine is awake and owns its pool, ``rollout.gpu_memory_utilization`` x the
  GPU; the learner is idle but keeps its resident state (weights, gradients, optimizer state,
  frozen copies). vLLM checks at start-up that the free memory is at least that pool
  (``vllm/v1/worker/utils.py:request_memory``, vLLM 0.32: ``free_memory < total_memory *
  gpu_memory_utilization`` raises), so the learner's resident memory plus the pool must fit.
* **update**: the engine sleeps (``rollout.sleep_level``: its KV cache is dropped and its weights
  go to host memory or are dropped), and the learner runs forward/backward: resident state plus
  the ZeRO-3 gathered parameters, the activations of one micro-batch, the fp32 ``[chunk, V]``
  log-softmax of one log-prob chunk, and what the sleeping engine still holds.

The weight sync in between (engine weights awake, KV cache not yet) needs less than the rollout
phase while one sync bucket fits in the pool's KV-cache share, so it is not checked on its own.

Everything here is a documented approximation that errs high: each term says where its factor
comes from and docs/cluster.md ("Colocated layouts and the memory arithmetic") lists what it leaves
out. Pure arithmetic on the config and the architecture numbers (stdlib only, no torch), so every
number is unit-tested on CPU (``tests/distributed/test_memory.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from rl_vlm.config import Config, LoraConfig
from rl_vlm.errors import ConfigError
from rl_vlm.models.lora import vision_targets
from rl_vlm.models.shape import ModelShape

GIB = 1024**3

# DeepSpeed's ZeRO-3 defaults (deepspeed/runtime/zero/config.py), which the learner does not override.
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
"""``stage3_max_live_parameters``: parameters kept gathered (full size) at once during forward/backward."""
ZERO_REDUCE_BUCKET = 500_000_000
"""``reduce_bucket_size``: gradient elements reduced (and buffered) at once."""
ZERO3_SUB_GROUP = 1_000_000_000
"""``sub_group_size``: parameters per optimizer sub-group; the step makes an fp32 copy of a
sub-group's gradient partition."""
OPTIMIZER_BYTES_PER_PARAM = 12
"""ZeRO paper (Rajbhandari et al. 2020, section 3.1, K = 12): fp32 master weights, Adam m and v,
4 bytes each, per trainable parameter. DeepSpeed keeps its own fp32 partition copy whatever the
model dtype, so fp32 models pay 12 too."""

PROCESS_OVERHEAD = 1 * GIB
"""Per process on the GPU (the learner rank and the vLLM worker): CUDA context, cuBLAS workspace and
NCCL communicator buffers, none of which torch's allocator or vLLM's pool counts. An allowance,
not derived. vLLM takes its start-up snapshot after its context and NCCL exist, so the worker's
own overhead sits outside its pool too."""
ENGINE_SLEEP_RESIDUAL = 0.10
"""Share of the engine's pool still held while it sleeps: vLLM's sleep-mode guide says sleeping
releases "up to 90%+" of its memory (weights and KV cache go; CUDA-graph pools, persistent
buffers and non-pool allocations stay), so 10 % is kept, at either sleep level."""
ENGINE_ACTIVATION_ALLOWANCE = 2 * GIB
"""What the engine needs besides weights and KV cache (vLLM's profiled activation peak, the vision
encoder's profiling run, CUDA graphs). An allowance, not derived; used only to refuse a pool too
small for the engine and to bound the suggested ``gpu_memory_utilization``."""
LOGPROB_CHUNK_FP32_COPIES = 6
"""fp32 ``[chunk, V]`` buffers live at once in one log-prob chunk's backward
(rl_vlm/distributed/workers/logprobs.py): the upcast logits, the tempered copy, the log-softmax,
its gradient, the logits' gradient, and p = exp(log p) for the entropy."""
LORA_SUGGESTION_RANK = 16
"""The adapter rank suggested when LoRA would make a full fine-tune fit."""


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


# Linear layers of one decoder layer and one ViT block, as (name, in_features, out_features).
def _text_linears(s: ModelShape) -> tuple[tuple[str, int, int], ...]:
    h, kv, i = s.hidden, s.kv_dim, s.intermediate
    return (("q_proj", h, h), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", h, h),
            ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h))


def _vision_linears(s: ModelShape) -> tuple[tuple[str, int, int], ...]:
    h, i = s.vision_hidden, s.vision_intermediate
    return (("qkv", h, 3 * h), ("proj", h, h), ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h))


def lora_params(shape: ModelShape, lora: LoraConfig) -> int:
    """Trainable adapter parameters: r x (in + out) for every targeted linear (A is r x in, B is
    out x r), in each decoder layer and, with ``vision_tower``, each ViT block, following
    :func:`rl_vlm.models.lora.target_regex` (the ViT's fused ``qkv`` counts as q/k/v, its
    ``proj`` as o_proj). 0 when ``rank`` is 0."""
    if lora.rank <= 0:
        return 0
    wanted = set(lora.target_modules)
    text = sum(i + o for name, i, o in _text_linears(shape) if name in wanted)
    total = shape.layers * text
    if lora.vision_tower:
        vision_names = vision_targets(lora.target_modules)
        total += shape.vision_depth * sum(i + o for name, i, o in _vision_linears(shape) if name in vision_names)
    return lora.rank * total


# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColocatedMemory:
    """Bytes on one colocated GPU (learner rank 0 and engine 0; every rank holds the same) in the
    two phases. ``resident`` and ``overhead`` count in both; the engine's pool only in the rollout,
    the other transients only in the update."""

    gpu: int
    """One GPU's memory (``cluster.gpu_memory_gib``)."""
    weights: int
    """The policy's weights (and adapters) on this rank: dtype bytes x params, / ranks under
    ZeRO-3; 0 with ``learner.offload_params``."""
    gradients: int
    """Gradient partitions of the trainable parameters (dtype bytes each, / ranks from ZeRO-2);
    DeepSpeed keeps these buffers between steps."""
    optimizer: int
    """fp32 master weights and Adam m, v of the trainable parameters (12 bytes each, / ranks from
    ZeRO-1); 0 with ``learner.offload_optimizer`` (host memory)."""
    frozen_copies: int
    """The KL reference and the EMA reference, each a frozen ZeRO copy of the weights (no LoRA),
    or the EMA of the adapter (LoRA)."""
    overhead: int
    """:data:`PROCESS_OVERHEAD` for the learner rank and the vLLM worker."""
    engine_pool: int
    """Rollout: ``rollout.gpu_memory_utilization`` x ``gpu``, all of it vLLM's."""
    engine_needs: int
    """The smallest pool the engine can run in: its weights (/ TP), the KV cache of one sequence
    of ``data.max_prompt_length + rollout.max_new_tokens`` tokens, :data:`ENGINE_ACTIVATION_ALLOWANCE`."""
    engine_sleeping: int
    """Update: what the sleeping engine keeps (:data:`ENGINE_SLEEP_RESIDUAL` of its pool)."""
    gathered: int
    """Update: ZeRO-3 parameters gathered at full size (``stage3_max_live_parameters``, at least
    the largest tensor, at most the model) plus one gradient reduce bucket."""
    activations: int
    """Update: what autograd keeps for one micro-batch at its token budget, at the peak (see
    :func:`activation_bytes`)."""
    logprob_chunk: int
    """Update: :data:`LOGPROB_CHUNK_FP32_COPIES` fp32 ``[learner.logprob_chunk_size, V]`` buffers."""
    optimizer_step: int
    """Update, at the optimizer step (activations freed by then): the fp32 copy of one sub-group's
    gradient partition; 0 when the optimizer runs on the host."""
    tokens: int
    """Tokens per micro-batch (:func:`micro_batch_tokens`)."""

    @property
    def resident(self) -> int:
        """What the learner keeps on the GPU in both phases."""
        return self.weights + self.gradients + self.optimizer + self.frozen_copies

    @property
    def rollout(self) -> int:
        return self.resident + self.overhead + self.engine_pool

    @property
    def update_transient(self) -> int:
        """The larger of the forward/backward peak and the optimizer step's."""
        return max(self.gathered + self.activations + self.logprob_chunk, self.optimizer_step)

    @property
    def update(self) -> int:
        return self.resident + self.overhead + self.engine_sleeping + self.update_transient

    def describe(self) -> str:
        """A small table of both phases in GiB (rows that are 0 in both are left out)."""
        rows = [
            ("learner weights", self.weights, self.weights),
            ("learner gradients", self.gradients, self.gradients),
            ("optimizer state", self.optimizer, self.optimizer),
            ("frozen copies (reference, EMA)", self.frozen_copies, self.frozen_copies),
            ("CUDA contexts, NCCL (2 processes)", self.overhead, self.overhead),
            ("vLLM pool", self.engine_pool, 0),
            ("sleeping engine", 0, self.engine_sleeping),
            ("ZeRO-3 gathered params, buckets", 0, self.gathered),
            (f"activations ({self.tokens} tokens)", 0, self.activations),
            ("log-prob chunk", 0, self.logprob_chunk),
        ]
        if self.optimizer_step > self.gathered + self.activations + self.logprob_chunk:
            rows.append(("optimizer step (replaces the three above)", 0, self.optimizer_step))
        width = max(len(r[0]) for r in rows) + 2

        def cell(b: int) -> str:
            return f"{b / GIB:8.1f}" if b else f"{'-':>8}"

        lines = [f"{'GiB of ' + format(self.gpu / GIB, '.1f'):<{width}}{'rollout':>8}{'update':>8}"]
        lines += [f"{name:<{width}}{cell(a)}{cell(b)}" for name, a, b in rows if a or b]
        lines.append(f"{'total':<{width}}{cell(self.rollout)}{cell(self.update)}")
        lines.append(f"{'free':<{width}}{(self.gpu - self.rollout) / GIB:8.1f}{(self.gpu - self.update) / GIB:8.1f}")
        return "\n".join(lines)


def trainable_params(cfg: Config, shape: ModelShape) -> int:
    """Parameters with gradients and optimizer state: the adapters under LoRA (the base frozen);
    else the whole model, less ``model.visual`` (blocks and merger, as the learner freezes it)
    with ``model.freeze_vision_tower``."""
    if cfg.model.lora.rank:
        return lora_params(shape, cfg.model.lora)
    return shape.total_params - (shape.vision_params if cfg.model.freeze_vision_tower else 0)


def _vision_trains(cfg: Config) -> bool:
    """Whether the ViT's activations are kept for a backward pass (some ViT parameter trains)."""
    if cfg.model.lora.rank:
        return cfg.model.lora.vision_tower
    return not cfg.model.freeze_vision_tower


def micro_batch_tokens(cfg: Config) -> int:
    """The most tokens one micro-batch holds: ``learner.max_tokens_per_micro_batch`` when set (a
    lone longer sequence is refused at validation), else ``learner.micro_batch_size x
    (data.max_prompt_length + rollout.max_new_tokens)`` (sequences padded to the longest)."""
    lc = cfg.learner
    return lc.max_tokens_per_micro_batch or lc.micro_batch_size * (cfg.data.max_prompt_length
                                                                    + cfg.rollout.max_new_tokens)


def activation_bytes(cfg: Config, shape: ModelShape) -> int:
    """Peak bytes autograd holds for one micro-batch (sdpa/flash attention: no [T, T] scores).

    Token budget: T = :func:`micro_batch_tokens`; every prompt token may be visual, so the ViT
    sees up to ``merge^2 x micro_batch_size x max_prompt_length`` patches, or ``merge^2 x T``
    under a token budget (any of its tokens may be a prompt's).

    Per decoder layer and token, the tensors autograd saves (counted in elements of the model
    dtype): two RMSNorms that upcast to fp32 (3H each: the fp32 input, the normalised output),
    q, k, v (H + 2 kv), the rotated q, k (H + kv), k and v repeated to all heads for sdpa (2H),
    the attention output and o_proj's input (2H), and the SwiGLU MLP's gate, up, silu(gate) and
    product (4I): 12H + 3kv + 4I. Per ViT block and patch likewise 13 Hv + 4 Iv (fused qkv, no GQA).
    The per-layer count of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", 34h bytes per token for a 4h GELU MLP) is the same bookkeeping.

    With ``model.gradient_checkpointing`` each layer keeps only its input (one H-vector per
    token and layer, and the final hidden states), and the backward recomputes one layer at a
    time: twice one layer's activations (the recomputed tensors and their gradients). Without it
    every layer's activations stay, plus one layer's gradients. A frozen ViT (no trainable
    parameter in it) keeps nothing, but one block's forward runs before the language model does.
    The ViT's saved tensors stay through the language model's backward; the ViT's own backward
    runs after the language model's has freed its activations, hence the ``max``.
    """
    m, lc = cfg.model, cfg.learner
    a = _dtype_bytes(m.dtype)
    tokens = micro_batch_tokens(cfg)
    prompt_tokens = tokens if lc.max_tokens_per_micro_batch else lc.micro_batch_size * cfg.data.max_prompt_length
    patches = prompt_tokens * shape.spatial_merge_size**2
    h, hv = shape.hidden, shape.vision_hidden
    text_layer = tokens * a * (12 * h + 3 * shape.kv_dim + 4 * shape.intermediate)
    vision_block = patches * a * (13 * hv + 4 * shape.vision_intermediate)
    if m.gradient_checkpointing:
        text_peak = (shape.layers + 1) * tokens * h * a + 2 * text_layer
        vision_saved = (shape.vision_depth + 1) * patches * hv * a
        vision_backward = 2 * vision_block
    else:
        text_peak = shape.layers * text_layer + tokens * h * a + text_layer
        vision_saved = shape.vision_depth * vision_block
        vision_backward = vision_block
    if not _vision_trains(cfg):
        vision_saved, vision_backward = 0, vision_block
    return vision_saved + max(text_peak, vision_backward)


def estimate_colocated_memory(cfg: Config, shape: ModelShape, needs_reference: bool,
                              needs_ema_reference: bool = False) -> ColocatedMemory:
    """The per-GPU bytes of ``cfg``'s colocated layout (see :class:`ColocatedMemory`).

    Resident learner state follows the ZeRO paper's model-state formula (2 + 2 + 12 bytes per
    parameter in mixed precision: weights, gradients, optimizer state), each term divided by
    ``learner.num_ranks`` from the stage that partitions it (optimizer state from ZeRO-1,
    gradients from ZeRO-2, weights at ZeRO-3). Under LoRA only the adapters have gradients and
    optimizer state, and the KL reference is the base with the adapter disabled (no copy);
    ``needs_reference`` / ``needs_ema_reference`` say whether the algorithm scores with a frozen
    reference / an EMA reference (:attr:`Algorithm.needs_reference`, ``Algorithm.ema_reference()``).
    """
    lc, m, r = cfg.learner, cfg.model, cfg.rollout
    n = lc.num_ranks
    w = _dtype_bytes(m.dtype)
    gpu = int(cfg.cluster.gpu_memory_gib * GIB)
    adapters = lora_params(shape, m.lora)
    trainable = trainable_params(cfg, shape)
    params_div = n if lc.zero_stage == 3 else 1
    grads_div = n if lc.zero_stage >= 2 else 1
    optim_div = n if lc.zero_stage >= 1 else 1
    weights = 0 if lc.offload_params else w * (shape.total_params + adapters) // params_div
    gradients = w * trainable // grads_div
    optimizer = 0 if lc.offload_optimizer else OPTIMIZER_BYTES_PER_PARAM * trainable // optim_div
    frozen = 0
    if not lc.offload_params:
        if m.lora.rank:
            frozen = w * adapters // params_div if needs_ema_reference else 0
        else:
            frozen = (int(needs_reference) + int(needs_ema_reference)) * w * shape.total_params // params_div
    gathered = 0
    if lc.zero_stage == 3:
        live = min(shape.total_params + adapters, max(ZERO3_MAX_LIVE_PARAMETERS, shape.largest_param))
        gathered = w * live
    if trainable:
        gathered += w * min(trainable, ZERO_REDUCE_BUCKET)
    # ZeRO-3 steps one sub-group at a time; stages 1-2 upcast the whole gradient partition.
    partition = trainable // optim_div
    optimizer_step = 0 if lc.offload_optimizer else 4 * (min(partition, ZERO3_SUB_GROUP) if lc.zero_stage == 3
                                                        else partition)
    pool = int(r.gpu_memory_utilization * gpu)
    tp = r.tensor_parallel_size
    engine_w = 4 if r.dtype == "float32" else 2
    seq = cfg.data.max_prompt_length + r.max_new_tokens
    # vLLM splits the KV heads over the TP workers (each keeps at least one).
    kv_per_token = 2 * shape.layers * max(shape.kv_heads // tp, 1) * shape.head_dim * engine_w
    engine_needs = engine_w * shape.total_params // tp + seq * kv_per_token + ENGINE_ACTIVATION_ALLOWANCE
    return ColocatedMemory(
        gpu=gpu, weights=weights, gradients=gradients, optimizer=optimizer, frozen_copies=frozen,
        overhead=2 * PROCESS_OVERHEAD, engine_pool=pool, engine_needs=engine_needs,
        engine_sleeping=int(ENGINE_SLEEP_RESIDUAL * pool), gathered=gathered,
        activations=activation_bytes(cfg, shape),
        logprob_chunk=LOGPROB_CHUNK_FP32_COPIES * 4 * lc.logprob_chunk_size * shape.vocab,
        optimizer_step=optimizer_step, tokens=micro_batch_tokens(cfg))


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------

def _g(b: int) -> str:
    return f"{b / GIB:.1f}"


def _replace(cfg: Config, section: str, **changes: object) -> Config:
    """``cfg`` with fields of one sub-config (``learner``, ``model`` ...) changed."""
    sub = getattr(cfg, section)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **changes)})


def _with_lora(cfg: Config) -> Config:
    return _replace(cfg, "model", lora=dataclasses.replace(cfg.model.lora, rank=LORA_SUGGESTION_RANK))


def _fits(cfg: Config, shape: ModelShape, needs_reference: bool, needs_ema_reference: bool) -> bool:
    e = estimate_colocated_memory(cfg, shape, needs_reference, needs_ema_reference)
    return e.engine_needs <= e.engine_pool and e.rollout <= e.gpu and e.update <= e.gpu


def _learner_fixes(cfg: Config) -> list[tuple[str, Callable[[Config], Config]]]:
    """Changes that shrink the learner's resident state, as (override, apply), in the order they
    are suggested; only those not already set."""
    lc, m = cfg.learner, cfg.model
    out: list[tuple[str, Callable[[Config], Config]]] = []
    if not lc.offload_optimizer and lc.zero_stage >= 1:
        out.append(("learner.offload_optimizer=true", lambda c: _replace(c, "learner", offload_optimizer=True)))
    if not m.lora.rank:
        out.append((f"model.lora.rank={LORA_SUGGESTION_RANK}", _with_lora))
    if not m.freeze_vision_tower and not m.lora.rank:
        out.append(("model.freeze_vision_tower=true", lambda c: _replace(c, "model", freeze_vision_tower=True)))
    if not lc.offload_params and lc.zero_stage == 3:
        out.append(("learner.offload_params=true", lambda c: _replace(c, "learner", offload_params=True)))
    return out


def _micro_batch_fix(cfg: Config, shape: ModelShape, fits: Callable[[Config], bool]) -> str | None:
    """The largest smaller ``learner.micro_batch_size`` that fits and divides the sequences a rank
    gets per mini-batch (as validation requires)."""
    lc = cfg.learner
    if lc.max_tokens_per_micro_batch:  # the largest smaller budget (halving) that still holds a sequence
        seq, budget = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens, lc.max_tokens_per_micro_batch // 2
        while budget >= seq:
            if fits(_replace(cfg, "learner", max_tokens_per_micro_batch=budget)):
                return f"learner.max_tokens_per_micro_batch={budget}"
            budget //= 2
        return None
    per_rank = lc.mini_batch_size * cfg.rollout.n // max(lc.num_ranks, 1)
    for mb in range(lc.micro_batch_size - 1, 0, -1):
        if per_rank % mb == 0:
            candidate = _replace(cfg, "learner", micro_batch_size=mb)
            if fits(candidate):
                return f"learner.micro_batch_size={mb}"
    return None


def _fix_text(lead: list[str], overrides: list[str]) -> str:
    """``lead`` phrases, then ``set`` and the overrides, joined by ``or``."""
    items = lead + ([f"set {overrides[0]}", *overrides[1:]] if overrides else [])
    return ", or ".join(items)


def check_colocated_fits(cfg: Config, shape: ModelShape, needs_reference: bool,
                         needs_ema_reference: bool = False) -> None:
    """Raise :class:`ConfigError` (one line: the key to change, the numbers, the changes that
    would fit) when ``cfg``'s colocated layout does not fit ``cluster.gpu_memory_gib`` per GPU:
    the engine's pool too small for the engine, the rollout phase or the update phase too large
    (:func:`estimate_colocated_memory`). Every suggested change is checked: it alone makes the
    whole layout fit."""
    e = estimate_colocated_memory(cfg, shape, needs_reference, needs_ema_reference)
    r, lc = cfg.rollout, cfg.learner
    util, gib = r.gpu_memory_utilization, f"{cfg.cluster.gpu_memory_gib:g}"
    seq = cfg.data.max_prompt_length + r.max_new_tokens

    def fits(c: Config) -> bool:
        return _fits(c, shape, needs_reference, needs_ema_reference)

    def working(base: Config, options: list[tuple[str, Callable[[Config], Config]]]) -> list[str]:
        return [name for name, apply in options if fits(apply(base))]

    # The highest utilisation the learner leaves room for, rounded down to a hundredth.
    room = e.gpu - e.resident - e.overhead
    best_util = math.floor(100 * room / e.gpu) / 100 if room > 0 else 0.0

    if e.engine_needs > e.engine_pool:
        need_util = math.ceil(100 * e.engine_needs / e.gpu) / 100
        raised = _replace(cfg, "rollout", gpu_memory_utilization=need_util)
        if need_util <= 1 and fits(raised):
            fixes = f"raise it to {need_util:.2f}"
        else:
            with_fix = working(raised, _learner_fixes(cfg)) if need_util <= 1 else []
            fixes = (f"raise it to {need_util:.2f} and set {' or '.join(with_fix)}" if with_fix
                     else "use GPUs with more memory (cluster.gpu_memory_gib)")
        raise ConfigError(
            f"rollout.gpu_memory_utilization: {util} of {gib} GiB = {_g(e.engine_pool)} GiB cannot hold the "
            f"engine's {_g(e.engine_needs)} GiB (weights, the KV cache of one {seq}-token sequence, "
            f"activations); {fixes}")

    if e.rollout > e.gpu:
        parts = [f"{name} {_g(b)}" for name, b in (("weights", e.weights), ("gradients", e.gradients),
                                                   ("optimizer", e.optimizer), ("frozen copies", e.frozen_copies))
                 if b]
        lowered = _replace(cfg, "rollout", gpu_memory_utilization=best_util)
        lead = [f"lower it to {best_util:.2f}"] if 0 < best_util < util and fits(lowered) else []
        fixes = _fix_text(lead, working(cfg, _learner_fixes(cfg)))
        raise ConfigError(
            f"rollout.gpu_memory_utilization: {util} of {gib} GiB leaves {_g(e.gpu - e.engine_pool)} GiB, but "
            f"learner rank 0 keeps {_g(e.resident)} GiB resident ({', '.join(parts)}) and the two processes' "
            f"CUDA contexts take {_g(e.overhead)}; "
            f"{fixes or 'no single change fits; use more learner ranks or GPUs with more memory'}")

    if e.update > e.gpu:
        overrides: list[str] = []
        if not cfg.model.gradient_checkpointing:
            overrides += working(cfg, [("model.gradient_checkpointing=true",
                                        lambda c: _replace(c, "model", gradient_checkpointing=True))])
        micro = _micro_batch_fix(cfg, shape, fits)
        if micro is not None:
            overrides.append(micro)
        if lc.logprob_chunk_size > 64 and fits(_replace(cfg, "learner", logprob_chunk_size=64)):
            overrides.append("learner.logprob_chunk_size=64")
        overrides += working(cfg, _learner_fixes(cfg))
        key = overrides[0].split("=")[0] if overrides else "learner.micro_batch_size"
        transient = (f"ZeRO-3 gathered parameters {_g(e.gathered)}, activations {_g(e.activations)} for "
                     f"{e.tokens} tokens, log-prob chunk {_g(e.logprob_chunk)}")
        if e.optimizer_step > e.gathered + e.activations + e.logprob_chunk:
            transient = f"the optimizer step's fp32 gradients {_g(e.optimizer_step)}"
        raise ConfigError(
            f"{key}: the update needs {_g(e.update)} GiB of {gib} GiB on learner rank 0 (resident "
            f"{_g(e.resident)}, {transient}, sleeping engine {_g(e.engine_sleeping)}, CUDA contexts "
            f"{_g(e.overhead)}); {_fix_text([], overrides) or 'no single change fits'}")
