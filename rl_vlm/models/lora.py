"""LoRA on the learners (``model.lora``): which layers get adapters, the PEFT config, and the
adapter's on-disk form that vLLM loads.

The learners wrap the policy with PEFT (:func:`wrap_policy`); only the adapters train. The
engines keep the base weights and take each new adapter as a vLLM LoRA adapter (tower and
merger included when ``model.lora.vision_tower``: vLLM's ``enable_tower_connector_lora``), so a
weight sync moves adapter bytes only (:mod:`rl_vlm.distributed.sync.adapter`). The KL reference
is the base model with the adapter disabled, not a second model.

Pure helpers here import nothing heavy; :func:`wrap_policy` and :func:`merged_state_dict` import
PEFT/torch when called.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rl_vlm.config import LoraConfig

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig as PeftLoraConfig

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts (``vllm.config.lora.MaxLoRARanks``)."""

VISION_BLOCK_LAYERS = ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
"""The linear layers of one Qwen2.5-VL vision block (``model.visual.blocks.<i>``)."""


def target_regex(lora: LoraConfig) -> str:
    """PEFT ``target_modules`` as one full-match regex: the named layers of the language model
    and, with ``vision_tower``, the vision blocks' layers whose last name component is named
    (``qkv`` and ``proj`` of the ViT's attention count as the attention layers)."""
    names = "|".join(re.escape(n) for n in lora.target_modules)
    text = rf"model\.language_model\.layers\.\d+\..*\.({names})"
    if not lora.vision_tower:
        return rf"(.*\.)?{text}"
    wanted = vision_targets(lora.target_modules)
    vision = [layer for layer in VISION_BLOCK_LAYERS if layer.split(".")[-1] in wanted]
    if not vision:
        return rf"(.*\.)?{text}"
    vis = "|".join(re.escape(v) for v in vision)
    return rf"(.*\.)?({text}|model\.visual\.blocks\.\d+\.({vis}))"


def vision_targets(target_modules: tuple[str, ...]) -> set[str]:
    """The last name components of the ViT block layers ``target_modules`` names: the language
    model's names, plus the ViT's fused ``qkv`` for any of q/k/v and its ``proj`` for o_proj."""
    wanted = set(target_modules)
    if wanted & {"q_proj", "k_proj", "v_proj"}:
        wanted.add("qkv")
    if "o_proj" in wanted:
        wanted.add("proj")
    return wanted


def engine_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"model.lora.rank={rank} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def peft_config(lora: LoraConfig, base_path: str) -> PeftLoraConfig:
    """The ``peft.LoraConfig`` of ``model.lora`` (its JSON is what the engines load beside the weights)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=target_regex(lora), bias="none", base_model_name_or_path=base_path)


def wrap_policy(model: torch.nn.Module, lora: LoraConfig, base_path: str) -> torch.nn.Module:
    """``model`` with LoRA adapters (PEFT's default init: B = 0, so the wrapped model computes
    what the base does); every base parameter frozen, only the adapters trainable."""
    from peft import get_peft_model

    peft_model: torch.nn.Module = get_peft_model(model, peft_config(lora, base_path))
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ValueError(f"model.lora.target_modules={list(lora.target_modules)} matched no layer of the model")
    return peft_model


ADAPTER = "default"
"""The name PEFT gives the one adapter (``...lora_A.default.weight`` in the wrapped model)."""


def adapter_state_dict(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under the names ``save_pretrained`` writes and vLLM reads (the adapter
    name dropped: ``...q_proj.lora_A.weight``), detached, on the CPU. Read from the adapter's own
    parameters: PEFT's ``get_peft_model_state_dict`` walks the whole model's state dict, most
    of a small adapter's sync time."""
    out = {}
    for name, p in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            out[name.replace(f".{ADAPTER}.", ".")] = p.detach().to("cpu").clone()
    return out


def merged_state_dict(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter folded in, W + (alpha / r) B A, under the
    base model's own names (what ``rl-vlm export`` and ``trainer.save_final_model`` write). The
    wrapped model is left unchanged."""
    from peft.tuners.lora import Linear as LoraLinear

    deltas = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLinear):  # target_regex names linear layers only
            deltas[_base_name(name) + ".weight"] = module.get_delta_weight(ADAPTER)
    merged: dict[str, torch.Tensor] = {}
    for key, value in peft_model.state_dict().items():
        if ".lora_" in key:
            continue
        name = _base_name(key.replace(".base_layer.", "."))
        merged[name] = (value + deltas[name].to(value.dtype) if name in deltas else value).detach().cpu().clone()
    return merged


def _base_name(name: str) -> str:
    """A PEFT-wrapped module or parameter name as the base model names it."""
    return name.removeprefix("base_model.model.")
