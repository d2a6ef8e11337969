"""The learner's forward layout: a micro-batch's sequences packed into one row, no padding
(``learner.packing``), and each distinct image encoded once however many of the
micro-batch's sequences show it (the G responses of a group share their prompt's images).

Packing. The ``[n, T]`` right-padded micro-batch becomes one ``[1, L]`` row of its L real tokens.
Qwen2.5-VL's mrope positions are computed per sequence on the padded batch (the model's own
``get_rope_index``, so image tokens get their (t, h, w) positions) and packed the same way, with
the text positions ``0 .. len − 1`` of each sequence prepended as a fourth row: transformers reads
that row to keep attention inside each sequence (a block-diagonal causal mask under sdpa/eager,
flash-attn's varlen kernel on GPU). The final hidden states are scattered back to ``[n, T, H]``,
so everything after the backbone (the chunked LM head, the views) is unchanged; the scatter is
differentiable, and nothing vocabulary-wide is involved.

Images once. A GRPO micro-batch holds several responses to one prompt, and the vision tower
would encode that prompt's image once per response. Here only each distinct image list is passed
to the tower (a forward pre-hook on it swaps in the distinct grids), and a forward hook repeats
its output rows for every sequence that shows them. The repeat is an index, so autograd sums the
gradients of the copies into the one encoding: the same gradient as encoding each copy.

Torch only, no transformers import: the model is whatever the learner holds, reached through
:func:`hf_model`. ``tests/workers/test_logprobs.py`` checks log-probs and parameter gradients
against the padded, every-copy forward on the tiny model, for every algorithm's views.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rl_vlm.batch import SequenceBatch
from rl_vlm.distributed.workers.logprobs import final_hidden_states


def hf_model(module: torch.nn.Module) -> Any:
    """The Hugging Face ``Qwen2_5_VLForConditionalGeneration`` inside a DeepSpeed engine
    (``.module``) and/or a PEFT wrapper (``get_base_model()``)."""
    m: Any = getattr(module, "module", module)
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def packs(packing: str, attn_implementation: str) -> bool:
    """Whether ``learner.packing`` packs under the resolved ``model.attn_implementation``: ``on``,
    or ``auto`` with flash-attn (whose varlen kernel makes packing free; under sdpa/eager the
    block-diagonal mask spans the packed row)."""
    return packing == "on" or (packing == "auto" and attn_implementation == "flash_attention_2")


# ----------------------------------------------------------------------- distinct images
@dataclass(frozen=True)
class DistinctImages:
    """The images of a micro-batch with repeats removed."""

    pixel_values: torch.Tensor
    """[P', D] patches of the distinct images only."""
    grid_thw: torch.Tensor
    """[I', 3] their grids."""
    rows: torch.Tensor
    """[M] int64: for each visual token of the micro-batch, in sequence order (what the model
    scatters into its image placeholders), the row of the tower's output that holds it."""


def distinct_images(pixel_values: torch.Tensor, grid_thw: torch.Tensor, images_per_seq: list[int],
                    image_source: list[int], merge: int) -> DistinctImages | None:
    """Remove repeated image lists from a micro-batch's vision inputs.

    Args:
        pixel_values, grid_thw: every sequence's images, in sequence order
            (:class:`~rl_vlm.batch.SequenceBatch`).
        images_per_seq: [n] images per sequence.
        image_source: [n] which image list each sequence shows (equal keys: the same list).
        merge: the vision tower's ``spatial_merge_size`` (visual tokens = patches / merge²).

    Returns:
        The distinct images and the row map, or None when no list repeats (nothing to save).
    """
    if len(set(image_source)) == len(image_source):
        return None
    patches = [int(p) for p in grid_thw.prod(-1)]
    first_image = [0]
    for k in images_per_seq:
        first_image.append(first_image[-1] + k)
    patch_start = [0]
    for p in patches:
        patch_start.append(patch_start[-1] + p)
    kept: list[int] = []  # image indices (of the full order) that are encoded
    token_start: dict[int, int] = {}  # image index -> its first row in the tower's output
    first_row: dict[int, int] = {}  # source key -> the sequence whose images are encoded
    out_rows = 0
    for row, key in enumerate(image_source):
        if key in first_row:
            continue
        first_row[key] = row
        for img in range(first_image[row], first_image[row + 1]):
            kept.append(img)
            token_start[img] = out_rows
            out_rows += patches[img] // merge ** 2
    rows = []
    for key in image_source:
        src = first_row[key]
        for img in range(first_image[src], first_image[src + 1]):
            rows.append(torch.arange(token_start[img], token_start[img] + patches[img] // merge ** 2))
    pix = torch.cat([pixel_values[patch_start[i]: patch_start[i + 1]] for i in kept])
    return DistinctImages(pixel_values=pix, grid_thw=grid_thw[kept], rows=torch.cat(rows))


@contextlib.contextmanager
def encode_once(visual: torch.nn.Module, distinct: DistinctImages) -> Iterator[None]:
    """While active, the vision tower ``visual`` is called with the distinct images' grids and
    its merged output (``pooler_output``) is repeated to every sequence's visual tokens."""
    grid = distinct.grid_thw.to(next(visual.parameters()).device)

    def pre(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return args, {**kwargs, "grid_thw": grid}

    def post(_module: torch.nn.Module, _args: Any, _kwargs: Any, out: Any) -> Any:
        out.pooler_output = out.pooler_output[distinct.rows.to(out.pooler_output.device)]
        return out

    handles = [visual.register_forward_pre_hook(pre, with_kwargs=True),
               visual.register_forward_hook(post, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------- packing
def packed_position_ids(rope_index: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        image_grid_thw: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """[4, 1, L] positions of the packed row: each sequence's text positions ``0 .. len − 1``,
    then its (t, h, w) mrope positions from ``rope_index`` (the model's ``get_rope_index``) on the
    right-padded ``[n, T]`` batch."""
    keep = attention_mask.bool()
    mrope, _ = rope_index(input_ids, mm_token_type_ids=(input_ids == image_token_id).int(),
                          image_grid_thw=image_grid_thw, attention_mask=attention_mask)
    text = torch.cat([torch.arange(int(n), device=input_ids.device) for n in keep.sum(-1)])
    return torch.cat([text[None], mrope[:, keep]])[:, None, :]


def pack(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[n, T, ...] right-padded -> [1, L, ...], the real tokens of every row, in order."""
    return values[attention_mask.bool()][None]


def unpack(packed: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[1, L, H] -> [n, T, H], zeros at the padding; differentiable in ``packed``."""
    keep = attention_mask.bool()
    out = packed.new_zeros((*keep.shape, packed.shape[-1]))
    return out.masked_scatter(keep[..., None], packed[0])


# ----------------------------------------------------------------------- the forward
def micro_batch_hidden(module: torch.nn.Module, b: SequenceBatch, packed: bool, image_token_id: int) -> torch.Tensor:
    """[n, T, H] final hidden states of micro-batch ``b`` (the LM head's input; no logits),
    packed without padding when ``packed`` (else right-padded), each distinct image list encoded
    once. ``module``: the model, a DeepSpeed engine or a PEFT wrapper around it."""
    param = next(module.parameters())
    dev, hf = param.device, hf_model(module)
    ids, attn, grid = b.input_ids.to(dev), b.attention_mask.to(dev), b.image_grid_thw.to(dev)
    distinct = distinct_images(b.pixel_values, b.image_grid_thw, b.images_per_seq, b.image_source,
                               hf.config.vision_config.spatial_merge_size)
    pixels = b.pixel_values if distinct is None else distinct.pixel_values
    inputs: dict[str, Any] = dict(pixel_values=pixels.to(dev, dtype=param.dtype), image_grid_thw=grid,
                                  use_cache=False)
    if packed:
        positions = packed_position_ids(hf.model.get_rope_index, ids, attn, grid, image_token_id)
        inputs.update(input_ids=pack(ids, attn), position_ids=positions)
    else:
        # mrope needs to know which tokens are image tokens; without this transformers silently
        # falls back to 1-D positions and the log-probs disagree with vLLM.
        inputs.update(input_ids=ids, attention_mask=attn, mm_token_type_ids=(ids == image_token_id).int())
    with contextlib.nullcontext() if distinct is None else encode_once(hf.model.visual, distinct):
        hidden = final_hidden_states(module, **inputs)
    return unpack(hidden, attn) if packed else hidden


__all__ = ["DistinctImages", "distinct_images", "encode_once", "hf_model", "micro_batch_hidden", "pack",
           "packed_position_ids", "packs", "unpack"]
