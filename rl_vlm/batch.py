"""Typed batches that flow through one training step, with documented shapes.

Order convention: a step has B prompts and G samples per prompt, N = B*G sequences, group-major
(sample j of prompt i sits at index i*G + j). ``T`` is the padded length of prompt + response.
Per-token tensors are aligned with ``input_ids``: position t holds the value for token t
(its log-prob given tokens < t); position 0 and prompt/padding positions are masked out by
``response_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prompt:
    """One dataset row, ready for rollout and scoring."""

    uid: str
    """Stable id ``<file>:<row>`` used for grouping and error messages."""
    prompt_text: str
    """Chat-templated text with one ``<|vision_start|><|image_pad|><|vision_end|>`` per image."""
    images: list[Any]
    """PIL images, already resized to the model's min/max pixels."""
    row: dict[str, Any]
    """All row fields (``problem``, ``answer``, ``task``...) for reward functions."""


@dataclass
class RolloutBatch:
    """What the rollout pool returns for B prompts x G samples (N = B*G, group-major)."""

    prompts: list[Prompt]
    """[B] the prompts that were sampled."""
    group_size: int
    """G."""
    prompt_ids: list[list[int]]
    """[N] prompt token ids with image placeholders expanded (as the engine saw them)."""
    response_ids: list[list[int]]
    """[N] sampled token ids, EOS included when generation stopped on it."""
    rollout_logprobs: list[list[float]]
    """[N] the engine's log-prob of each sampled token."""
    response_texts: list[str]
    """[N] decoded responses."""
    truncated: list[bool]
    """[N] True when the response hit ``max_new_tokens`` without EOS."""
    weight_version: int
    """Policy version the engines held when sampling."""

    @property
    def group_index(self) -> torch.Tensor:
        """[N] int64 index of the prompt each sequence belongs to."""
        return torch.arange(len(self.prompts)).repeat_interleave(self.group_size)


@dataclass
class LearnerBatch:
    """The sequences a step hands to the learner pool (N of them, group-major), with the images
    each one is conditioned on. Image lists are shared objects across a group, so the learners
    preprocess each distinct list once."""

    prompt_ids: list[list[int]]
    """[N] prompt token ids with image pads expanded."""
    response_ids: list[list[int]]
    """[N] sampled response token ids."""
    images: list[list[Any]]
    """[N] PIL images the response was sampled with."""
    view_images: dict[str, list[list[Any]]] = field(default_factory=dict)
    """view name -> [N] the transformed images of that view (see ``Algorithm.views``)."""

    def __len__(self) -> int:
        return len(self.response_ids)

    def subset(self, idx: list[int]) -> LearnerBatch:
        """The sequences ``idx`` (in that order), e.g. those an algorithm keeps for the update."""
        return LearnerBatch([self.prompt_ids[i] for i in idx], [self.response_ids[i] for i in idx],
                            [self.images[i] for i in idx],
                            {k: [v[i] for i in idx] for k, v in self.view_images.items()})


@dataclass(frozen=True)
class StepShape:
    """How the learners cut and score one step's sequences (``LearnerPool.set_batch``): the same
    for every rank, so it travels once per step next to the batch."""

    mini_batch_size: int
    """Prompts per optimizer step (``learner.mini_batch_size``): a mini-batch is
    ``mini_batch_size * group_size`` consecutive sequences of the batch."""
    group_size: int
    """G, samples per prompt (``rollout.n``)."""
    max_response_len: int
    """``rollout.max_new_tokens``: the constant denominator of the length-independent loss
    aggregations (``seq-mean-token-sum-norm``)."""
    temperature: float
    """Logits are divided by it before log-softmax: the rollout temperature in RL steps (so the
    learner scores the distribution the engines sampled from), 1.0 in SFT steps."""
    step: int
    """The current training step (1-based), for algorithms with schedules."""
    total_steps: int
    """``trainer.total_steps``, the horizon of those schedules."""


@dataclass
class SequenceBatch:
    """Padded learner inputs for a set of sequences (a rank's share of a mini-batch)."""

    input_ids: torch.Tensor
    """[n, T] int64, right-padded prompt + response."""
    attention_mask: torch.Tensor
    """[n, T] int64, 1 on real tokens."""
    response_mask: torch.Tensor
    """[n, T] float32, 1 on response tokens (EOS included), 0 on prompt and padding."""
    pixel_values: torch.Tensor
    """[P, D] flattened image patches of all images of the n sequences, in sequence order."""
    image_grid_thw: torch.Tensor
    """[I, 3] (t, h, w) patch grid of each image, in sequence order."""
    images_per_seq: list[int]
    """[n] how many images each sequence has (their rows of ``image_grid_thw`` are consecutive)."""
    image_source: list[int]
    """[n] which image list each sequence shows: equal entries are the same images, encoded once
    (:mod:`rl_vlm.distributed.workers.packing`)."""
    advantages: torch.Tensor | None = None
    """[n, T] float32 per-token advantage (0 off the response)."""
    old_logprobs: torch.Tensor | None = None
    """[n, T] log pi_old of each token, recomputed by the learner (no grad)."""
    ref_logprobs: torch.Tensor | None = None
    """[n, T] log pi_ref of each token, when a reference model is used."""
    # Algorithm-specific tensors do not travel here: the learner hands them to the algorithm as
    # typed fields of LossInputs (per-view outputs: LossInputs.views, rl_vlm.algorithms.context).

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])
