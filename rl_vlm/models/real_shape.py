"""A real-shape Qwen2.5-VL for CPU: Qwen2.5-VL-7B's vocabulary, token ids and vision geometry
around narrow towers.

Kept at real size, because costs grow with them: the vocabulary (151,936 logits per token for the
LM head, the softmax and sampling), images at real resolutions (the 7B experiments' processor
bounds: 256–1,280 visual tokens per image, 1,024–5,120 patches through the vision tower) and the
vision tower's structure (14-px patches, 2x2 merge, 112-px attention windows with full-attention
blocks, ``out_hidden_size`` = text hidden). Made small: the width and depth of both towers
(:class:`RealShape`), so a step stays affordable on 2 cores.

Token ids are Qwen2.5's: the 22 added tokens sit at 151643–151664 (``<|endoftext|>`` 151643,
``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ``<|vision_start|>`` 151652, ``<|vision_end|>``
151653, ``<|image_pad|>`` 151655, ``<|video_pad|>`` 151656, ...), with the chat template of the
tiny model, so prompts render and expand as for the real checkpoints. The text vocabulary is a
byte-level BPE trained on easy-VQA text (ids from 0); every other id up to 151,935 is a placeholder
token ``<|placeholder_{id}|>``. The real tokenizer leaves 151665–151935 unassigned; here every id
the engine can sample decodes, so ``len(tokenizer) == vocab_size``. No merge produces a
placeholder, so encoding never yields one.

Random init only (no warm start), drawn by numpy (:mod:`rl_vlm.models.init`): the same bytes on
every CPU for one seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rl_vlm.models.tiny import CHAT_TEMPLATE, tokenizer_corpus

VOCAB_SIZE = 151936
"""Qwen2.5-VL's ``vocab_size`` (3B and 7B alike)."""

# Qwen2.5's added tokens at their ids, with the ``special`` flag of its tokenizer_config.json
# (special tokens are dropped by ``skip_special_tokens``; tool-call and FIM tokens are not).
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)
TOKEN_IDS = {content: i for i, content, _ in ADDED_TOKENS}
ENDOFTEXT_ID, IM_END_ID = TOKEN_IDS["<|endoftext|>"], TOKEN_IDS["<|im_end|>"]

# The 7B experiments' processor bounds (configs/model/qwen2_5_vl_7b.yaml): 256-1,280 visual tokens.
MIN_PIXELS = 200704
MAX_PIXELS = 1003520


def placeholder(token_id: int) -> str:
    """The placeholder token at ``token_id``."""
    return f"<|placeholder_{token_id}|>"


def bpe_tokens(tokenizer: Any) -> int:
    """How many trained BPE tokens ``tokenizer`` has (ids ``0..n-1``; the first placeholder is ``n``)."""
    return min(i for t, i in tokenizer.get_vocab().items() if t.startswith("<|placeholder_"))


@dataclass(frozen=True)
class RealShape:
    """The narrow dimensions of the real-shape model; everything else is Qwen2.5-VL-7B's."""

    text_hidden: int = 128
    """Text hidden size (7B: 3,584); also the vision merger's ``out_hidden_size``."""
    text_layers: int = 4
    text_intermediate: int = 512
    text_heads: int = 2
    """Query heads; head dim = text_hidden / text_heads = 64, the size vLLM's CPU attention accepts."""
    text_kv_heads: int = 1
    """Grouped-query attention as in the 7B (28 query heads over 4 KV heads)."""
    mrope_section: tuple[int, int, int] = (8, 12, 12)
    """Temporal/height/width rotary sections; they sum to head dim / 2 (7B: 16, 24, 24 of 128)."""
    vision_hidden: int = 128
    """Vision hidden size (7B: 1,280)."""
    vision_depth: int = 4
    vision_intermediate: int = 256
    vision_heads: int = 2
    fullatt_block_indexes: tuple[int, ...] = (1, 3)
    """Blocks with full attention, the others attend within 112-px windows; as in the 7B (blocks 7, 15,
    23, 31 of 32) each full block closes a group of window blocks."""
    bpe_vocab_size: int = 1024
    """Upper bound of the trained BPE part (the easy-VQA corpus runs out of merges below it)."""


def build_real_shape_tokenizer(shape: RealShape = RealShape()) -> Any:  # -> PreTrainedTokenizerFast
    """Byte-level BPE at ids ``0..n-1``, Qwen2.5's added tokens at their ids, placeholders at every
    other id below :data:`VOCAB_SIZE`; deterministic (BPE training is)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=shape.bpe_vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = trained["vocab"]
    if sorted(vocab.values()) != list(range(len(vocab))) or len(vocab) > ENDOFTEXT_ID:
        raise RuntimeError(f"trained BPE vocabulary is not ids 0..{len(vocab) - 1} below {ENDOFTEXT_ID}")
    n_bpe = len(vocab)
    vocab.update({content: i for i, content, _ in ADDED_TOKENS})
    vocab.update({placeholder(i): i for i in range(n_bpe, VOCAB_SIZE) if i not in TOKEN_IDS.values()})
    if len(vocab) != VOCAB_SIZE:  # a trained token spelled like an added token or a placeholder
        raise RuntimeError(f"vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in trained["merges"]]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Already in the model vocabulary, so they keep their ids; added, so text containing them
    # encodes to the one id (as in Qwen's tokenizer.json).
    tok.add_tokens([AddedToken(content, special=special, normalized=False) for _, content, special in ADDED_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)
    # Qwen2.5-VL's additional special tokens (the special added tokens but <|endoftext|>).
    fast.add_special_tokens({"additional_special_tokens": [c for i, c, s in ADDED_TOKENS if s and i != ENDOFTEXT_ID]})
    if len(fast) != VOCAB_SIZE or fast.convert_tokens_to_ids("<|image_pad|>") != TOKEN_IDS["<|image_pad|>"]:
        raise RuntimeError("added tokens did not keep their Qwen2.5 ids")
    return fast


def real_shape_config(shape: RealShape = RealShape()) -> Any:  # -> Qwen2_5_VLConfig
    """Qwen2.5-VL-7B-Instruct's config with :class:`RealShape`'s widths and depths."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
            num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
            num_key_value_heads=shape.text_kv_heads, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_scaling={"type": "mrope", "mrope_section": list(shape.mrope_section)}, tie_word_embeddings=False,
            eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID),
        vision_config=dict(
            depth=shape.vision_depth, hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
            num_heads=shape.vision_heads, out_hidden_size=shape.text_hidden, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=list(shape.fullatt_block_indexes),
            tokens_per_second=2),
        image_token_id=TOKEN_IDS["<|image_pad|>"], video_token_id=TOKEN_IDS["<|video_pad|>"],
        vision_start_token_id=TOKEN_IDS["<|vision_start|>"], vision_end_token_id=TOKEN_IDS["<|vision_end|>"],
        # Extra config attributes go through the config dataclass's **kwargs, which its
        # generated signature leaves out.
        bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID,  # type: ignore[call-arg]
        tie_word_embeddings=False)


def build_real_shape_model(out_dir: str | Path, seed: int = 0, shape: RealShape = RealShape()) -> Path:
    """Write weights, config, generation config, processor, ``build_info.json`` and ``SHA256SUMS``
    to ``out_dir``."""
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from rl_vlm.models.init import deterministic_init_
    from rl_vlm.models.tiny import write_sums

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_real_shape_tokenizer(shape)
    config = real_shape_config(shape)
    # The constructor's own init draws from torch's CPU-dependent normal kernel; overwrite it all.
    model = deterministic_init_(Qwen2_5_VLForConditionalGeneration(config), seed)
    # Qwen2.5-VL-7B-Instruct's stop ids, without its sampling defaults: vLLM would apply those to
    # every request that does not set them.
    model.generation_config = GenerationConfig(bos_token_id=ENDOFTEXT_ID, pad_token_id=ENDOFTEXT_ID,
                                               eos_token_id=[IM_END_ID, ENDOFTEXT_ID])
    model.save_pretrained(out)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14,
                                              merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    info = {"shape": "real", "seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "bpe_tokens": bpe_tokens(tokenizer), "dims": asdict(shape),
            "warm_start": None}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_sums(out)
    return out
