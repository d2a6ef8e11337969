"""``rl-vlm export <checkpoint> <dir>``: a training checkpoint -> a Hugging Face model directory.

The checkpoint holds the policy as ZeRO-3 shards (the fp32 master partitions in the optimizer
state of every rank). DeepSpeed's ``zero_to_fp32`` reassembles them offline, without starting a
process group; the HF config and processor the learner saved beside them complete the
directory, which transformers and vLLM then load by path. A LoRA checkpoint (``model.lora``)
holds the adapter alone: it is loaded over the base model it was trained from (``model.path``,
named in the saved ``hf/adapter_config.json``) and folded in, W + (alpha / r) B A.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rl_vlm.checkpoint.store import CheckpointError, check_complete, resolve_resume

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


def export_checkpoint(checkpoint: str, out_dir: str, dtype: str = "float32") -> str:
    """Write ``out_dir`` (weights as safetensors, config, processor) from ``checkpoint`` (a
    checkpoint directory or a run directory, meaning its newest checkpoint); returns out_dir.

    ``dtype``: ``float32`` (the master weights, exact) or ``bfloat16`` (half the size)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoProcessor

    try:
        path = resolve_resume(checkpoint, os.getcwd())
    except CheckpointError as e:
        raise CheckpointError(str(e).replace("trainer.resume", "checkpoint")) from None
    assert path is not None
    check_complete(path)
    hf = os.path.join(path, "hf")
    if not os.path.isdir(hf):
        raise CheckpointError(f"checkpoint {path} has no hf/ (config + processor); was it written by rl-vlm?")
    state = get_fp32_state_dict_from_zero_checkpoint(path, tag="learner")
    config = AutoConfig.from_pretrained(hf)
    if os.path.isfile(os.path.join(hf, "adapter_config.json")):
        model = _merge_lora(hf, state)
    else:
        model = _full_model(config, state, path)
    # transformers wraps PreTrainedModel.to in functools.wraps(nn.Module.to), whose stub type
    # keeps Module.to's ``self`` as the first parameter.
    model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])  # type: ignore[arg-type]
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(hf).save_pretrained(out_dir)
    return out_dir


def _full_model(config: PretrainedConfig, state: dict[str, torch.Tensor], path: str) -> PreTrainedModel:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings are one tensor saved once; anything else missing is a broken checkpoint.
    tied = {k for k in missing if config.get_text_config().tie_word_embeddings and k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    return model


def _merge_lora(hf: str, state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A LoRA checkpoint holds the adapter alone: rebuild the wrapped model over the base it was
    trained from (``base_model_name_or_path`` of the saved adapter config, i.e. ``model.path``),
    load the adapter, fold it in."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    lora = LoraConfig.from_pretrained(hf)
    base_path = lora.base_model_name_or_path
    if not base_path or not (os.path.isdir(base_path) or "/" in base_path):
        raise CheckpointError(f"{hf}/adapter_config.json names no base model (base_model_name_or_path)")
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_path, dtype=torch.float32)
    wrapped = get_peft_model(base, lora)
    adapter = {k: v for k, v in state.items() if ".lora_" in k}
    if not adapter:
        raise CheckpointError(f"checkpoint {hf} has an adapter config but no adapter tensors")
    # The ZeRO checkpoint names them as the wrapped module does (``...lora_A.default.weight``).
    result = wrapped.load_state_dict(adapter, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"adapter tensors that fit no layer of {base_path}: {result.unexpected_keys[:5]}")
    merged: PreTrainedModel = wrapped.merge_and_unload()
    return merged
