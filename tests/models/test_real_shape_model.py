"""The real-shape Qwen2.5-VL: Qwen2.5-VL's vocabulary, token ids, vision geometry and processor
bounds around narrow towers; the same bytes on every CPU; every id decodes; transformers and vLLM
run it at real image resolutions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rl_vlm import cli
from rl_vlm.data.prompt import render_prompt
from rl_vlm.models.real_shape import ADDED_TOKENS, VOCAB_SIZE, bpe_tokens, placeholder

# The seed-0 build, the same bytes on every CPU with the locked libraries (numpy-drawn init; BPE
# training is deterministic). A change to the tokenizer corpus, RealShape, the config, the init
# scheme or numpy/tokenizers/transformers moves them.
RANDOM_INIT_SHA256 = {
    "model.safetensors": "814bd31776920b72bb906b23e5a4e6504dab26b9c830175991ffbf05271dd99a",
    "tokenizer.json": "9763c3381c187e2a5e3bdfa408cf0d5b924207e2e75e8b48f8676a06699e0ba2",
}
IMAGE_PAD = 151655


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def proc(real_shape_model_dir: Path):  # -> Qwen2_5_VLProcessor
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(real_shape_model_dir)


def _image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_config_has_qwen2_5_vl_vocabulary_ids_and_vision_geometry(real_shape_model_dir: Path) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(real_shape_model_dir)
    tc, vc = cfg.text_config, cfg.vision_config
    assert tc.vocab_size == VOCAB_SIZE == 151936
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == \
        (151655, 151656, 151652, 151653)
    assert (tc.bos_token_id, tc.eos_token_id, tc.pad_token_id) == (151643, 151645, 151643)
    assert (vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size, vc.window_size) == (14, 2, 2, 112)
    assert vc.fullatt_block_indexes == [1, 3] and vc.depth == 4
    assert vc.out_hidden_size == tc.hidden_size == 128
    # head_dim 64: the size vLLM's CPU attention kernels accept; mrope sections sum to head_dim / 2.
    assert tc.hidden_size // tc.num_attention_heads == 64 == 2 * sum(tc.rope_parameters["mrope_section"])
    assert not tc.tie_word_embeddings


def test_random_init_is_pinned(real_shape_model_dir: Path) -> None:
    assert {name: _sha256(real_shape_model_dir / name) for name in RANDOM_INIT_SHA256} == RANDOM_INIT_SHA256


def test_tokenizer_keeps_qwen_ids_and_decodes_every_id(real_shape_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_shape_model_dir)
    assert len(tok) == VOCAB_SIZE  # vLLM samples ids below the config's vocab_size: each has a token
    assert sorted(tok.get_vocab().values()) == list(range(VOCAB_SIZE))
    assert {content: tok.convert_tokens_to_ids(content) for _, content, _ in ADDED_TOKENS} == \
        {content: i for i, content, _ in ADDED_TOKENS}
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == \
        ("<|im_end|>", 151645, "<|endoftext|>", 151643)
    texts = tok.batch_decode([[i] for i in range(VOCAB_SIZE)])
    assert all(texts)
    n = bpe_tokens(tok)
    assert 256 < n < 151643
    assert [texts[i] for i in (n, 151642, 151665, VOCAB_SIZE - 1)] == \
        [placeholder(i) for i in (n, 151642, 151665, VOCAB_SIZE - 1)]
    assert texts[151643:151665] == [content for _, content, _ in ADDED_TOKENS]
    # Text encodes to trained tokens and added tokens only, never to a placeholder.
    ids = tok("<tool_call>what color is the shape?</tool_call><|im_end|>")["input_ids"]
    assert ids[0] == 151657 and ids[-2:] == [151658, 151645] and all(i < n for i in ids[1:-2])
    assert tok.decode(ids, skip_special_tokens=True) == "<tool_call>what color is the shape?</tool_call>"


@pytest.mark.parametrize(("width", "height", "tokens"), [
    (448, 448, 256),       # min_pixels exactly: (448/14/2)^2
    (896, 896, 1024),
    (896, 448, 512),
    (64, 64, 256),         # upscaled to min_pixels
    (2000, 2000, 1225),    # downscaled under max_pixels (1,280 tokens)
])
def test_processor_gives_real_visual_token_counts(proc, width: int, height: int, tokens: int) -> None:
    text = render_prompt(proc, "what color is the shape?", 1, "think_answer")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>what color")
    enc = proc(text=[text], images=[_image(width, height)], return_tensors="pt")
    t, h, w = enc["image_grid_thw"][0].tolist()
    assert t == 1 and h * w // 4 == tokens == int((enc["input_ids"] == IMAGE_PAD).sum())
    assert 256 <= tokens <= 1280


def test_transformers_forward_gives_finite_vocabulary_wide_logits(real_shape_model_dir: Path, proc) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(real_shape_model_dir, dtype=torch.float32)
    text = render_prompt(proc, "what color is the shape?", 1, "think_answer")
    enc = proc(text=[text], images=[_image(448, 448)], return_tensors="pt")
    enc["mm_token_type_ids"] = (enc["input_ids"] == IMAGE_PAD).int()  # what the learner builds
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], 151936)
    assert bool(torch.isfinite(logits).all())


def test_cli_builds_the_pinned_seed_and_refuses_a_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import rl_vlm.models.real_shape as real_shape

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(real_shape, "build_real_shape_model", lambda out, seed: calls.append((out, seed)) or out)
    assert cli.main(["build-tiny-model", "--shape", "real"]) == 0
    assert calls == [(cli.DEFAULT_REAL_SHAPE_DIR, 0)]
    with pytest.raises(SystemExit):
        cli.main(["build-tiny-model", "--shape", "real", "--warm-start-steps", "10"])
