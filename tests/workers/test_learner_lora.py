"""A real learner rank (DeepSpeed ZeRO-3, one rank, in this process) with LoRA adapters, and the
EMA reference under ZeRO-3: every log-prob is compared with a plain Hugging Face model built
from the weights it should equal (the base, the published adapter, the merged export, an EMA
computed by hand)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rl_vlm.config import AlgorithmConfig, LearnerConfig, LoraConfig, ModelConfig
from rl_vlm.distributed.sharding import RankShard
from rl_vlm.distributed.workers.learner import Learner
from tests.workers.test_logprobs import FakeEngine

ATOL = 1e-5
DECAY = 0.75


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shard(model_dir: Path) -> RankShard:
    """4 sequences: 2 prompts with an image each x 2 responses of ragged lengths."""
    from transformers import AutoProcessor

    from rl_vlm.data.prompt import render_prompt

    proc = AutoProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(2)]
    prompts = [proc(text=[render_prompt(proc, q, 1, "think_answer")], images=[images[k]],
                    return_tensors="pt")["input_ids"][0].tolist()
               for k, q in enumerate(["what color is the shape?", "what shape is it?"])]
    g = torch.Generator().manual_seed(1)
    responses = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 9, 3, 7)]
    return RankShard(images=[[i] for i in images], image_index=[0, 0, 1, 1], view_index={},
                     prompt_ids=[prompts[i // 2] for i in range(4)], response_ids=responses,
                     mini_batches=[[0, 1, 2, 3]], micro_batches=[[[0, 1], [2, 3]]], num_tokens=[24.0], num_seqs=[4.0],
                     max_response_len=9, temperature=1.0, step=1, total_steps=10)


def _advantages(shard: RankShard) -> list[torch.Tensor]:
    return [torch.full((len(r),), 1.0 if i % 2 else -1.0) for i, r in enumerate(shard.response_ids)]


def _hf_logprobs(model: torch.nn.Module, learner: Learner, shard: RankShard) -> list[torch.Tensor]:
    """The response log-probs of a plain HF model through the learner's own forward (no DeepSpeed)."""
    plain = Learner(0, 1, learner.model_cfg, learner.cfg, AlgorithmConfig(), "cpu", 0)
    plain.engine, plain.processor = FakeEngine(model.eval()), learner.processor
    plain.ref_engine = plain.ema_engine = None
    plain.image_token_id = learner.image_token_id
    plain.model_cfg = ModelConfig(path=learner.model_cfg.path)  # no LoRA: plain forward
    plain.set_batch(shard)
    return plain.compute_logprobs("policy")


def _load(path: str | Path) -> torch.nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)


def _with_adapter(base_dir: Path, tensors: dict[str, torch.Tensor], config_json: str, where: Path) -> Any:
    """``base_dir``'s model with the adapter PEFT loads from a directory :func:`write_adapter` wrote
    (the engines' format)."""
    from peft import PeftModel

    from rl_vlm.distributed.sync.adapter import write_adapter

    return PeftModel.from_pretrained(_load(base_dir), write_adapter(str(where), tensors, config_json))


def _close(got: list[torch.Tensor], want: list[torch.Tensor], atol: float = ATOL) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=atol, rtol=0)


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def rank(tiny_model_dir: Path):
    """One ZeRO-3 rank in this process (re-pointed per test with :meth:`Learner.reinit`)."""
    learner = Learner(0, 1, ModelConfig(path=str(tiny_model_dir), lora=LoraConfig(rank=8)),
                      LearnerConfig(num_ranks=1, micro_batch_size=2, lr=1e-2), AlgorithmConfig(kl_coef=0.1), "cpu", 0)
    learner.init("127.0.0.1", _free_port(), 2)
    yield learner
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _configure(rank: Learner, model_dir: Path, lora: int, algorithm: AlgorithmConfig) -> Learner:
    rank.reinit(ModelConfig(path=str(model_dir), lora=LoraConfig(rank=lora)),
                LearnerConfig(num_ranks=1, micro_batch_size=2, lr=1e-2), algorithm, 0, 2)
    return rank


def test_lora_trains_the_adapter_only_and_every_export_computes_the_policy(rank: Learner, tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    from rl_vlm.distributed.sync.adapter import adapter_config_json

    learner = _configure(rank, tiny_model_dir, 8, AlgorithmConfig(kl_coef=0.1))
    assert learner.ref_engine is None  # the reference is the base with the adapter off
    # r (in + out) per adapted layer: 2 layers x (q 128x128, k 128x64, v 128x64, o 128x128,
    # gate/up 128x256, down 256x128).
    per_layer = sum(8 * (i + o) for i, o in [(128, 128), (128, 64), (128, 64), (128, 128),
                                             (128, 256), (128, 256), (256, 128)])
    assert learner.trainable_params() == 2 * per_layer
    shard = _shard(tiny_model_dir)
    learner.set_batch(shard)
    base = _hf_logprobs(_load(tiny_model_dir), learner, shard)
    p0, r0 = learner.compute_logprobs("policy"), learner.compute_logprobs("reference")
    _close(p0, base)  # B = 0 at init: the wrapped model is the base model
    _close(r0, base)
    learner.update(_advantages(shard), p0, r0)
    p1, r1 = learner.compute_logprobs("policy"), learner.compute_logprobs("reference")
    assert _max_diff(p1, p0) > 1e-2  # the adapter moved the policy
    _close(r1, base)  # ... and the base weights did not move

    tensors = learner.adapter_tensors()
    assert tensors is not None and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    config = adapter_config_json(learner.engine.module.peft_config["default"])
    _close(_hf_logprobs(_with_adapter(tiny_model_dir, tensors, config, tmp_path / "adapter"), learner, shard), p1)

    learner.save_hf(str(tmp_path / "merged"))  # the adapter folded into plain HF weights
    merged = _load(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    _close(_hf_logprobs(merged, learner, shard), p1)

    learner.save_checkpoint(str(tmp_path / "ck"))
    size = sum(f.stat().st_size for f in (tmp_path / "ck" / "learner").iterdir())
    base_size = (Path(tiny_model_dir) / "model.safetensors").stat().st_size
    assert size < base_size / 2, f"a LoRA checkpoint holds the base weights? {size} vs {base_size} bytes"
    _configure(learner, tiny_model_dir, 8, AlgorithmConfig(kl_coef=0.1))
    learner.set_batch(shard)
    _close(learner.compute_logprobs("policy"), base)  # a fresh adapter ...
    learner.load_checkpoint(str(tmp_path / "ck"))
    _close(learner.compute_logprobs("policy"), p1, atol=0.0)  # ... restored exactly
    _close(learner.compute_logprobs("reference"), base)


@pytest.mark.parametrize("lora", [0, 8], ids=["full", "lora"])
def test_ema_reference_follows_the_hand_computed_average(rank: Learner, tiny_model_dir: Path, tmp_path: Path,
                                                         lora: int) -> None:
    """GRPO-CARE's EMA φ ← d φ + (1 − d) θ after one optimizer step equals a model built from
    d θ0 + (1 − d) θ1 by hand; under LoRA the EMA is of the adapter alone, swapped in for the pass."""
    from rl_vlm.algorithms.care_config import CareConfig

    algorithm = AlgorithmConfig(name="care", care=CareConfig(ema_decay=DECAY, ema_update_every=1))
    learner = _configure(rank, tiny_model_dir, lora, algorithm)
    shard = _shard(tiny_model_dir)
    learner.set_batch(shard)
    p0 = learner.compute_logprobs("policy")
    _close(learner.compute_logprobs("ema"), p0)
    if lora:
        a0 = learner.adapter_tensors()
    else:
        learner.save_hf(str(tmp_path / "theta0"))
    learner.update(_advantages(shard), p0, None)
    p1, ema = learner.compute_logprobs("policy"), learner.compute_logprobs("ema")
    assert _max_diff(p1, p0) > 1e-2 and _max_diff(ema, p1) > 1e-3
    _close(learner.compute_logprobs("policy"), p1, atol=0.0)  # the EMA pass left the policy as it was
    if lora:
        from rl_vlm.distributed.sync.adapter import adapter_config_json

        a1 = learner.adapter_tensors()
        assert a0 is not None and a1 is not None
        avg = {k: DECAY * a0[k] + (1 - DECAY) * a1[k] for k in a1}
        config = adapter_config_json(learner.engine.module.peft_config["default"])
        want_model = _with_adapter(tiny_model_dir, avg, config, tmp_path / "ema")
    else:
        learner.save_hf(str(tmp_path / "theta1"))
        want_model = _load(tmp_path / "theta0")
        theta1 = dict(_load(tmp_path / "theta1").named_parameters())
        with torch.no_grad():
            for name, p in want_model.named_parameters():
                p.mul_(DECAY).add_(theta1[name], alpha=1 - DECAY)
    _close(ema, _hf_logprobs(want_model, learner, shard))
