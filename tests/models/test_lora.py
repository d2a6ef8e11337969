"""Which layers get LoRA adapters (``model.lora``), checked against the tiny model's module names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rl_vlm.config import LoraConfig
from rl_vlm.models.lora import engine_max_lora_rank, target_regex


def _targets(model_dir: Path, lora: LoraConfig) -> set[str]:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    pattern = re.compile(target_regex(lora))
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)}


def test_language_model_only_by_default(tiny_model_dir: Path) -> None:
    got = _targets(tiny_model_dir, LoraConfig(rank=8))
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    assert got == {f"model.language_model.layers.{i}.{n}" for i in range(2) for n in names}


def test_vision_tower_blocks_follow_the_named_layers(tiny_model_dir: Path) -> None:
    got = _targets(tiny_model_dir, LoraConfig(rank=8, target_modules=("q_proj", "down_proj"), vision_tower=True))
    text = {f"model.language_model.layers.{i}.{n}" for i in range(2) for n in ("self_attn.q_proj", "mlp.down_proj")}
    # q_proj stands for the ViT's fused qkv; the merger is never adapted.
    vision = {f"model.visual.blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "mlp.down_proj")}
    assert got == text | vision


@pytest.mark.parametrize("rank,want", [(1, 1), (2, 8), (8, 8), (12, 16), (64, 64), (300, 320)])
def test_engine_rank_is_the_smallest_vllm_accepts(rank: int, want: int) -> None:
    assert engine_max_lora_rank(rank) == want
