"""The tiny Qwen2.5-VL: deterministic, loadable by path, processor and template as for Qwen."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from rl_vlm.data.prompt import render_prompt


def test_build_is_deterministic_in_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rl_vlm.models.tiny import build_tiny_model

    a = load_file(str(tiny_model_dir / "model.safetensors"))
    b = load_file(str(build_tiny_model(tmp_path / "same", seed=0) / "model.safetensors"))
    c = load_file(str(build_tiny_model(tmp_path / "other", seed=1) / "model.safetensors"))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (tmp_path / "same" / "tokenizer.json").read_bytes()


def test_loads_by_path_with_processor_and_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    text = render_prompt(proc, "what color is the shape?", 1, "think_answer")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>what color is the shape? Think step by step inside "
                    "<think></think> tags, then give the final answer inside <answer></answer> tags.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    img = Image.new("RGB", (112, 112), "red")
    enc = proc(text=[text], images=[img], return_tensors="pt")
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((enc["input_ids"] == pad).sum()) == 8 * 8 // 4
    assert torch.equal(enc["mm_token_type_ids"], (enc["input_ids"] == pad).int())  # what the learner builds
    out = model(**enc)
    assert out.logits.shape == (1, enc["input_ids"].shape[1], model.config.text_config.vocab_size)
    # head_dim 64: the size vLLM's CPU attention kernels accept.
    tc = model.config.text_config
    assert tc.hidden_size // tc.num_attention_heads == 64
    assert proc.tokenizer.eos_token == "<|im_end|>"
