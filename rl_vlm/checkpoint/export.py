"""``rl-vlm export <checkpoint> <dir>``: a training checkpoint -> a Hugging Face model directory.

The checkpoint holds the policy as ZeRO-3 shards (the fp32 master partitions in the optimizer
state of every rank). DeepSpeed's ``zero_to_fp32`` reassembles them offline, without starting a
process group; the HF config and processor the learner saved beside them complete the
directory, which transformers and vLLM then load by path.
"""

from __future__ import annotations

import os

from rl_vlm.checkpoint.store import CheckpointError, check_complete, resolve_resume


def export_checkpoint(checkpoint: str, out_dir: str, dtype: str = "float32") -> str:
    """Write ``out_dir`` (weights as safetensors, config, processor) from ``checkpoint`` (a
    checkpoint directory or a run directory, meaning its newest checkpoint); returns out_dir.

    ``dtype``: ``float32`` (the master weights, exact) or ``bfloat16`` (half the size)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import (
        AutoConfig,
        AutoProcessor,
        Qwen2_5_VLForConditionalGeneration,
    )

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
    model = Qwen2_5_VLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings are one tensor saved once; anything else missing is a broken checkpoint.
    tied = {k for k in missing if config.get_text_config().tie_word_embeddings and k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    # transformers wraps PreTrainedModel.to in functools.wraps(nn.Module.to), whose stub type
    # keeps Module.to's ``self`` as the first parameter.
    model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])  # type: ignore[arg-type]
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(hf).save_pretrained(out_dir)
    return out_dir
