"""The architecture numbers of a Qwen2.5-VL checkpoint (:class:`ModelShape`): its parameter
counts computed exactly from them, read from a local ``config.json`` or, for the published hub
ids, from their config values. Stdlib only: validation reads it before anything heavy is
imported (the colocated memory check, :mod:`rl_vlm.distributed.memory`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from rl_vlm.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of a Qwen2.5-VL checkpoint that its memory depends on (the
    ``config.json`` fields named in each docstring)."""

    hidden: int
    """``text_config.hidden_size`` H."""
    layers: int
    """``num_hidden_layers`` L."""
    intermediate: int
    """``intermediate_size`` I of the SwiGLU MLP."""
    vocab: int
    """``vocab_size`` V."""
    heads: int
    """``num_attention_heads``; head dim = H / heads."""
    kv_heads: int
    """``num_key_value_heads`` (grouped-query attention)."""
    tied_embeddings: bool
    """``tie_word_embeddings``: the LM head shares the embedding matrix (3B) or has its own (7B+)."""
    vision_hidden: int
    """``vision_config.hidden_size`` of the ViT."""
    vision_depth: int
    """``vision_config.depth``: ViT blocks."""
    vision_intermediate: int
    """``vision_config.intermediate_size`` of the ViT's SwiGLU MLP."""
    vision_out: int
    """``vision_config.out_hidden_size``: the patch merger's output width (= H)."""
    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    """Patches merged (per side) into one visual token: 2, so 4 patches per token."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of the k and v projections: kv_heads x head dim."""
        return self.kv_heads * self.head_dim

    @property
    def text_layer_params(self) -> int:
        """One decoder layer (transformers' Qwen2_5_VLDecoderLayer): q, k, v with biases, o
        without; gate, up, down without biases; two RMSNorm weights."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        attention = (h * h + h) + 2 * (h * kv + kv) + h * h
        return attention + 3 * h * i + 2 * h

    @property
    def text_params(self) -> int:
        """The language model: embedding, layers, final norm, and the LM head unless tied."""
        embedding = self.vocab * self.hidden
        head = 0 if self.tied_embeddings else embedding
        return embedding + self.layers * self.text_layer_params + self.hidden + head

    @property
    def vision_block_params(self) -> int:
        """One ViT block (Qwen2_5_VLVisionBlock): fused qkv and proj with biases, a SwiGLU MLP
        with biases, two RMSNorm weights."""
        h, i = self.vision_hidden, self.vision_intermediate
        return (h * 3 * h + 3 * h) + (h * h + h) + 2 * (h * i + i) + (i * h + h) + 2 * h

    @property
    def merger_params(self) -> int:
        """The patch merger (Qwen2_5_VLPatchMerger): RMSNorm, then an MLP from the concatenated
        merge^2 patches to ``vision_out``, both linears with biases."""
        m = self.vision_hidden * self.spatial_merge_size**2
        return self.vision_hidden + (m * m + m) + (m * self.vision_out + self.vision_out)

    @property
    def vision_params(self) -> int:
        """The whole ``model.visual``: the patch embedding (a Conv3d without bias), the blocks and
        the merger (the rotary embedding has no parameters)."""
        patch = self.in_channels * self.temporal_patch_size * self.patch_size**2 * self.vision_hidden
        return patch + self.vision_depth * self.vision_block_params + self.merger_params

    @property
    def total_params(self) -> int:
        return self.text_params + self.vision_params

    @property
    def largest_param(self) -> int:
        """The largest single tensor (the embedding or LM head): ZeRO-3 gathers a module whole."""
        m = self.vision_hidden * self.spatial_merge_size**2
        return max(self.vocab * self.hidden, m * m, self.hidden * self.intermediate)


# The published config.json values (Hugging Face, Qwen/<id>/config.json). The 3B ties its
# embeddings; the 32B and 72B ViTs have intermediate_size 3456 where the 3B/7B have 3420. The 72B's
# text MLP is 29568 wide (Qwen2.5-72B's); its AWQ/GPTQ copies say 29696, padded for the kernels.
PUBLISHED_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": ModelShape(
        hidden=2048, layers=36, intermediate=11008, vocab=151936, heads=16, kv_heads=2, tied_embeddings=True,
        vision_hidden=1280, vision_depth=32, vision_intermediate=3420, vision_out=2048),
    "Qwen/Qwen2.5-VL-7B-Instruct": ModelShape(
        hidden=3584, layers=28, intermediate=18944, vocab=152064, heads=28, kv_heads=4, tied_embeddings=False,
        vision_hidden=1280, vision_depth=32, vision_intermediate=3420, vision_out=3584),
    "Qwen/Qwen2.5-VL-32B-Instruct": ModelShape(
        hidden=5120, layers=64, intermediate=27648, vocab=152064, heads=40, kv_heads=8, tied_embeddings=False,
        vision_hidden=1280, vision_depth=32, vision_intermediate=3456, vision_out=5120),
    "Qwen/Qwen2.5-VL-72B-Instruct": ModelShape(
        hidden=8192, layers=80, intermediate=29568, vocab=152064, heads=64, kv_heads=8, tied_embeddings=False,
        vision_hidden=1280, vision_depth=32, vision_intermediate=3456, vision_out=8192),
}


def _int(node: dict[str, object], key: str, default: int | None = None) -> int:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: {key} is {value!r}, expected an integer")
    return value


def shape_from_hf_config(hf: dict[str, object]) -> ModelShape | None:
    """A :class:`ModelShape` from a parsed Qwen2.5-VL ``config.json``: the text fields from
    ``text_config`` (transformers 5) or the top level (the published files), the vision fields
    from ``vision_config``. None when it is not a Qwen2.5-VL config."""
    if hf.get("model_type") != "qwen2_5_vl":
        return None
    nested = hf.get("text_config")
    text: dict[str, object] = nested if isinstance(nested, dict) else hf
    vision_node = hf.get("vision_config")
    vision: dict[str, object] = vision_node if isinstance(vision_node, dict) else {}
    tied = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    return ModelShape(
        hidden=_int(text, "hidden_size"), layers=_int(text, "num_hidden_layers"),
        intermediate=_int(text, "intermediate_size"), vocab=_int(text, "vocab_size"),
        heads=_int(text, "num_attention_heads"),
        kv_heads=_int(text, "num_key_value_heads", _int(text, "num_attention_heads")), tied_embeddings=bool(tied),
        vision_hidden=_int(vision, "hidden_size", 1280), vision_depth=_int(vision, "depth", 32),
        vision_intermediate=_int(vision, "intermediate_size", 3420),
        vision_out=_int(vision, "out_hidden_size", _int(text, "hidden_size")),
        patch_size=_int(vision, "patch_size", 14), temporal_patch_size=_int(vision, "temporal_patch_size", 2),
        in_channels=_int(vision, "in_channels", _int(vision, "in_chans", 3)),
        spatial_merge_size=_int(vision, "spatial_merge_size", 2))


def model_shape(path: str) -> ModelShape | None:
    """The shape of ``model.path``: from ``<path>/config.json`` when it is a local directory, else
    from :data:`PUBLISHED_SHAPES` for the listed hub ids; None for anything else (the memory check
    is then skipped)."""
    if os.path.isdir(path):
        f = os.path.join(path, "config.json")
        if not os.path.isfile(f):
            return None
        with open(f, encoding="utf-8") as fh:
            hf = json.load(fh)
        try:
            return shape_from_hf_config(hf) if isinstance(hf, dict) else None
        except ValueError as e:
            raise ConfigError(f"model.path: {f}: {e}") from None
    return PUBLISHED_SHAPES.get(path)
