"""The typed inputs the framework hands the algorithm hooks besides rewards and advantages.

- :class:`StepContext`: one per step, for the driver-side hooks (``score_rollouts``,
  ``compute_advantages``, ``select_for_update``). Built once by the driver
  (:func:`rl_vlm.driver.controller.step_context`); RESPONSE-aligned ``[N, L]`` tensors.
- :class:`ViewOutputs`: what the learners computed for one image view
  (:class:`~rl_vlm.algorithms.base.ViewSpec`), keyed by the view's name in
  :attr:`StepContext.views` (driver side, ``[N, L]``) and in
  :attr:`~rl_vlm.algorithms.base.LossInputs.views` (learner side, INPUT-aligned ``[n, T]``).

Row order is the step's: group-major over the raw prompts, then the groups of each rollout view
(:meth:`~rl_vlm.algorithms.base.Algorithm.rollout_views`). Response-aligned means position j is
response token j and L is the step's longest response, zero-padded (see ``response_mask``).
Imports no torch at run time (annotations only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class ViewOutputs:
    """One image view's tensors: driver side ``[N, L]``, learner side ``[n, T]`` (one micro-batch)."""

    old_logprobs: Tensor
    """log π_old of the sampled response tokens with the view's images, computed once before
    the update without grad."""
    kl: Tensor | None = None
    """Views with ``full_kl``: exact per-token KL(P ‖ P_view) between the old policy's full
    next-token distributions with the sequence's own and with the view's images; else None."""
    kl_rev: Tensor | None = None
    """Views with ``full_kl``: the reverse KL(P_view ‖ P); else None."""
    logprobs: Tensor | None = None
    """Learner side, views with ``with_grad``: the view's log-probs under the CURRENT policy,
    recomputed in every update micro-batch WITH grad; None elsewhere (and always driver side)."""


@dataclass(frozen=True)
class StepContext:
    """Everything the driver-side hooks see about the step besides rewards and advantages.

    Fields are filled by the framework for every algorithm; the optional ones are None (or
    ``views`` empty) when the algorithm did not ask for them (the capability named in each).
    """

    response_mask: Tensor
    """[N, L] float, 1 on each sequence's response tokens (EOS included), 0 on padding."""
    old_logprobs: Tensor
    """[N, L] log π_old of the sampled tokens: the learners' no-grad pass, or the engines' own
    with ``learner.old_logprobs=rollout``."""
    step: int
    """The current training step, 1-based (scheduled coefficients: PAPO annealing, VOGUE branch
    probability)."""
    total_steps: int
    """The planned number of steps (``trainer.total_steps``)."""
    micro_batches: list[list[int]]
    """Global sequence indices of each update micro-batch, on every rank (VPPO §3.1: μ is taken
    per micro-batch, as the authors' code does)."""
    device_mini_batches: list[list[int]]
    """Global sequence indices of each (rank, mini-batch) (VPPO's lo/hi, GRPO-CARE's
    ``group_scope=device``); every micro-batch lies inside one of them."""
    branch: Tensor
    """[N] long: 0 for sequences sampled on the raw images, k for those sampled on the k-th of
    :meth:`~rl_vlm.algorithms.base.Algorithm.rollout_views` (all 0 without rollout views)."""
    ref_logprobs: Tensor | None = None
    """[N, L] log π_ref of the frozen reference model; None unless ``needs_reference``."""
    views: Mapping[str, ViewOutputs] = field(default_factory=dict)
    """View name -> its ``[N, L]`` outputs, one entry per :meth:`~rl_vlm.algorithms.base.Algorithm.views`
    (``logprobs`` is always None here). For sequences sampled on a rollout view of the same name
    the view is evaluated on the RAW images, so it always compares the two branches."""
    ema_logprobs: Tensor | None = None
    """[N, L] log-probs of the EMA reference model the learners keep; None unless
    :meth:`~rl_vlm.algorithms.base.Algorithm.ema_reference` is set (GRPO-CARE)."""
    answer_mask: Tensor | None = None
    """[N, L] float, 1 on the response tokens strictly inside the last ``<answer>…</answer>``;
    None unless :attr:`~rl_vlm.algorithms.base.Algorithm.needs_answer_span` (GRPO-CARE)."""


__all__ = ["StepContext", "ViewOutputs"]
