"""Driver-side preparation of a step's experience for the algorithm hooks and the learners.

Kept out of the controller so that it reads as the data flow: this module turns prompts and a
rollout into (1) the prompts to sample, including the groups an algorithm wants sampled on a
transformed image (``Algorithm.rollout_views``), (2) the :class:`~rl_vlm.batch.LearnerBatch`
with every image view an algorithm asks for (``Algorithm.views``), and (3) the response-aligned
tensors of the :class:`~rl_vlm.algorithms.context.StepContext` the driver-side hooks read
(contract: :mod:`rl_vlm.algorithms.base`).

View transforms are drawn from ``numpy.random.default_rng`` seeded by :mod:`rl_vlm.seeds` (view k, prompt
or sequence j), so a step's masks are the same on every run and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from rl_vlm import seeds
from rl_vlm.algorithms.base import Algorithm, ViewSpec
from rl_vlm.algorithms.context import ViewOutputs
from rl_vlm.batch import LearnerBatch, Prompt, RolloutBatch


def pad_responses(values: Sequence[torch.Tensor] | Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-sequence values -> ([N, L] zero-padded, [N, L] mask)."""
    L = max((len(v) for v in values), default=0) or 1
    out = torch.zeros(len(values), L)
    mask = torch.zeros(len(values), L)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.as_tensor(v, dtype=torch.float32)
        mask[i, : len(v)] = 1.0
    return out, mask


def response_views(per_sequence: Mapping[str, list[torch.Tensor]]) -> dict[str, ViewOutputs]:
    """The learner pool's view outputs, keyed ``view/<name>/<field>`` with per-sequence values
    (``LearnerPool.compute_views``), as one response-aligned ``[N, L]``
    :class:`~rl_vlm.algorithms.context.ViewOutputs` per view name."""
    fields: dict[str, dict[str, torch.Tensor]] = {}
    for key, values in per_sequence.items():
        _, name, field = key.split("/")
        fields.setdefault(name, {})[field] = pad_responses(values)[0]
    return {name: ViewOutputs(**f) for name, f in fields.items()}


def _transform(view: ViewSpec, images: list[Any], rng: np.random.Generator) -> list[Any]:
    return [view.transform(img, rng) for img in images]


def with_rollout_views(prompts: list[Prompt], algorithm: Algorithm, seed: int, step: int) -> list[Prompt]:
    """The prompts to sample: the B raw prompts, then B copies per rollout view whose images are
    that view's transform (one draw per prompt). GRPO: ``prompts`` unchanged."""
    out = list(prompts)
    for k, view in enumerate(algorithm.rollout_views()):
        for j, p in enumerate(prompts):
            rng = np.random.default_rng(seeds.rollout_view(seed, step, k, j))
            out.append(replace(p, uid=f"{p.uid}#{view.name}", images=_transform(view, p.images, rng)))
    return out


def branch_of(rollout: RolloutBatch, num_raw_prompts: int) -> torch.Tensor:
    """[N] long: 0 for sequences of the raw prompts, k for those of the k-th rollout view."""
    return (rollout.group_index // num_raw_prompts).long()


def learner_batch(rollout: RolloutBatch, algorithm: Algorithm, num_raw_prompts: int, seed: int,
                  step: int) -> LearnerBatch:
    """Every sequence with its own images and each view's images.

    A view is drawn once per prompt (shared by its G responses) or once per response
    (``per_response``). For sequences sampled on a rollout view of the same name, the view is
    the RAW image instead, so the view always compares the two branches.
    """
    G, B = rollout.group_size, num_raw_prompts
    images = [rollout.prompts[i // G].images for i in range(len(rollout.response_ids))]
    rollout_names = [v.name for v in algorithm.rollout_views()]
    views: dict[str, list[list[Any]]] = {}
    for k, view in enumerate(algorithm.views()):
        per_prompt: dict[int, list[Any]] = {}
        seq_images: list[list[Any]] = []
        for i in range(len(rollout.response_ids)):
            p = i // G
            if p >= B and rollout_names[p // B - 1] == view.name:
                seq_images.append(rollout.prompts[p % B].images)
            elif view.per_response:
                rng = np.random.default_rng(seeds.response_view(seed, step, k, i))
                seq_images.append(_transform(view, images[i], rng))
            else:
                if p not in per_prompt:
                    rng = np.random.default_rng(seeds.prompt_view(seed, step, k, p))
                    per_prompt[p] = _transform(view, rollout.prompts[p].images, rng)
                seq_images.append(per_prompt[p])
        views[view.name] = seq_images
    return LearnerBatch(rollout.prompt_ids, rollout.response_ids, images, views)


def answer_mask(tokenizer: Any, response_ids: list[list[int]], L: int) -> torch.Tensor:
    """[N, L]: 1 on the response tokens whose text lies strictly inside the LAST
    ``<answer>…</answer>`` of the response (an unclosed tag runs to the end), 0 elsewhere.

    Character spans come from decoding token by token, so the span follows the template's tags
    whatever the tokenisation (GRPO-CARE's code instead assumes Qwen splits ``</answer>`` into
    exactly 3 tokens; algorithms.md §9.11).
    """
    out = torch.zeros(len(response_ids), L)
    for i, ids in enumerate(response_ids):
        pieces = [tokenizer.decode([t]) for t in ids]
        text = "".join(pieces)
        start = text.rfind("<answer>")
        if start < 0:
            continue
        start += len("<answer>")
        end = text.find("</answer>", start)
        end = len(text) if end < 0 else end
        pos = 0
        for t, piece in enumerate(pieces):
            if pos >= start and pos + len(piece) <= end and piece:
                out[i, t] = 1.0
            pos += len(piece)
    return out
