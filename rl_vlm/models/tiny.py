"""A tiny random-weight Qwen2.5-VL that transformers, vLLM and DeepSpeed all load by path.

Shapes follow what vLLM's CPU kernels accept (head_dim 64; see ``shared/notes/cpu-stack.md``):
text hidden 128, 2 layers, 2 query heads of 64, 1 KV head, mrope sections [8, 12, 12]; vision
depth 2, hidden 64. The tokenizer is a byte-level BPE trained on easy-VQA text with Qwen's
special tokens and chat template, so prompts render exactly as for real Qwen2.5-VL checkpoints.
Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL's chat template, restricted to what the tiny model needs (text + image items).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


CORPUS_TEMPLATES = ("think_answer", "plain")


def _corpus() -> list[str]:
    import easy_vqa

    from rl_vlm.data.prompt import TEMPLATES, sft_target

    questions, answers, _ = easy_vqa.get_train_questions()
    # A fixed list, not every template: adding a prompt template must not change the tokenizer
    # (and with it the tiny model and every measured figure).
    extra = [TEMPLATES[name].format(problem="") for name in CORPUS_TEMPLATES]
    extra += [sft_target(a) for a in easy_vqa.get_answers()]
    extra += ["You are a helpful assistant.", "system", "user", "assistant"]
    return questions + answers + extra


def build_tokenizer(vocab_size: int = 1024):  # -> PreTrainedTokenizerFast
    """Byte-level BPE with Qwen's special tokens; deterministic (BPE training is)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return fast


def tiny_config(tokenizer):  # -> Qwen2_5_VLConfig
    from transformers import Qwen2_5_VLConfig

    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}, tie_word_embeddings=False,
            eos_token_id=eos, pad_token_id=pad, bos_token_id=pad),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                           window_size=112),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=False)


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write model weights, config, generation config and a full processor to ``out_dir``."""
    from transformers import (GenerationConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    eos, pad = config.text_config.eos_token_id, config.text_config.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    # Saving/loading fails without a video processor, even for an image-only model.
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
                                    tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    info = {"seed": seed, "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "warm_start": None}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return out


WARM_START_STEPS = 300


def recipe_fingerprint(seed: int, warm_start_steps: int) -> str:
    """What determines the built model's bytes: the build and warm-start code, the libraries that
    run it, the seed and the step count. Two builds with one fingerprint are the same model (the
    warm start runs single-threaded), so a test may reuse ``artifacts/`` instead of rebuilding."""
    import hashlib
    import importlib.metadata as md

    from rl_vlm.data import easy_vqa, prompt
    from rl_vlm.models import warmstart

    h = hashlib.sha256(f"seed={seed} steps={warm_start_steps}".encode())
    for file in (__file__, warmstart.__file__, prompt.__file__, easy_vqa.__file__):
        h.update(Path(file).read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "pillow", "easy-vqa"):
        h.update(f"{dist}={md.version(dist)}".encode())
    return h.hexdigest()[:16]


def is_current(model_dir: str | Path, seed: int = 0, warm_start_steps: int = WARM_START_STEPS) -> bool:
    """Whether ``model_dir`` holds the model today's recipe builds for ``seed`` (see
    :func:`recipe_fingerprint`)."""
    info = Path(model_dir) / "build_info.json"
    return info.exists() and json.loads(info.read_text()).get("recipe") == recipe_fingerprint(seed, warm_start_steps)


def build_and_warm_start(out_dir: str | Path, seed: int = 0, warm_start_steps: int = WARM_START_STEPS) -> Path:
    """:func:`build_tiny_model`, then a short supervised pass so the policy follows the format."""
    from rl_vlm.models.warmstart import warm_start

    out = build_tiny_model(out_dir, seed)
    info = json.loads((out / "build_info.json").read_text())
    if warm_start_steps > 0:
        info["warm_start"] = warm_start(out, steps=warm_start_steps, seed=seed)
    info["recipe"] = recipe_fingerprint(seed, warm_start_steps)
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return out
