"""The algorithm contract. :class:`Algorithm` itself is plain GRPO (algorithms.md §1.1).

A variant (PAPO §2, VPPO §3, GRPO-CARE §4, VOGUE §5) subclasses :class:`Algorithm`, overrides
only the hooks it changes, and opens with a docstring naming the paper, the equation and its
delta from GRPO. The driver and the learner call the hooks unconditionally and never ask which
algorithm is running. Where each hook runs, in step order:

=====================  ==========  ===========================================================
hook                   where       GRPO                    what a variant does there
=====================  ==========  ===========================================================
``views()``            driver +    none                    PAPO masked image (with grad
                       learner                             optional), VPPO perturbed image,
                                                           VOGUE noisy image
``score_rollouts``     driver      rewards unchanged       GRPO-CARE consistency bonus from an
                                                           EMA reference's answer likelihood
``compute_advantages`` driver      group advantage,        VPPO reweighting, VOGUE uncertainty
                                   broadcast on tokens     bonus
``select_for_update``  driver      all sequences           VOGUE paper mode: per-sample branch
``step_metrics()``     driver      none                    PAPO γ_t, VPPO α, VOGUE bonus stats
``token_weights``      learner     None (all ones)         VPPO top-k pivotal-token mask
``extra_loss_terms``   learner     none                    PAPO perception KL + double
                                                           entropy, VOGUE/VPPO entropy terms
=====================  ==========  ===========================================================

``loss`` composes the clipped policy-gradient loss (weighted by ``token_weights``), β·KL to the
reference (when ``kl_coef > 0``), −entropy_coef·H (when ``entropy_coef > 0``) and the extra
terms, all aggregated with the configured ``loss_agg`` mode and the mini-batch's global
denominators (see :func:`rl_vlm.algorithms.core.aggregate`).

Inputs. Besides rewards and advantages the hooks get typed inputs, never string-keyed dicts:

- the driver-side hooks (``score_rollouts``, ``compute_advantages``, ``select_for_update``) get
  the step's :class:`~rl_vlm.algorithms.context.StepContext` ``ctx``, whose tensors are
  RESPONSE-aligned ``[N, L]``: position j is response token j, L is the longest response of
  the step, zero-padded, matching ``ctx.response_mask``;
- the learner-side hooks (``token_weights``, ``extra_loss_terms``) get :class:`LossInputs`: ONE
  micro-batch, INPUT-aligned ``[n, T]`` tensors.

What the framework fills in (``ctx`` fields unless noted; an input the algorithm did not ask
for, through the capability named, is None):

- ``response_mask``, ``old_logprobs`` and ``ref_logprobs`` (None unless
  :attr:`Algorithm.needs_reference`): the step's sequences, log π_old (the learner's no-grad
  pass) and log π_ref. The learner side has the same three as :class:`LossInputs` fields.
- ``views[<name>]`` (both sides, ``ctx.views`` and :attr:`LossInputs.views`), one
  :class:`~rl_vlm.algorithms.context.ViewOutputs` per view of :meth:`Algorithm.views`:
  ``old_logprobs``, log π_old of the sampled response tokens with the view's images, computed
  once before the update without grad; ``kl`` / ``kl_rev`` (views with ``full_kl``), the exact
  per-token KL(P ‖ P_view) and KL(P_view ‖ P) between the old policy's full next-token
  distributions with the sequence's own and the view's images; ``logprobs`` (learner side,
  views with ``with_grad``), the view's log-probs under the current policy, recomputed in every
  micro-batch WITH grad.
- ``ema_logprobs`` ``[N, L]`` (when :meth:`Algorithm.ema_reference` is set): log-probs of the
  EMA reference model the learners maintain.
- ``answer_mask`` ``[N, L]`` (when :attr:`Algorithm.needs_answer_span`): 1 on the response
  tokens strictly inside the last ``<answer>…</answer>`` of the response.
- ``branch`` ``[N]`` long: 0 for sequences sampled on the raw images, k for those sampled on
  the k-th rollout view (:meth:`Algorithm.rollout_views`).
- ``micro_batches`` / ``device_mini_batches``: lists of lists of global sequence indices, one
  per update micro-batch / per (rank, mini-batch) — for statistics that the authors' code takes
  over those units (VPPO §3.1).
- ``step`` / ``total_steps`` (int, both sides: ``ctx`` and :class:`LossInputs`): the current
  training step (1-based) and the planned total, for scheduled coefficients (PAPO annealing,
  VOGUE branch probability).

Metrics. ``score_rollouts`` returns its statistics in :attr:`RolloutScores.metrics`; the hooks
that return a tensor (``compute_advantages``, ``select_for_update``) keep theirs for
:meth:`Algorithm.step_metrics`, which the driver logs after the step's driver-side hooks; the
loss's go in :attr:`LossOutput.metrics`.

Composition. Variants are cooperative subclasses: every hook a variant overrides calls
``super()`` and combines the result (views are concatenated, advantages shaped in turn, token
weights multiplied, loss terms appended, step metrics merged; the class-level
:meth:`Algorithm.check_config` and :meth:`Algorithm.has_rollout_views` chain the same way).
:func:`rl_vlm.algorithms.build_algorithm` composes ``papo+vppo`` as a class with both as bases,
after checking the pair is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rl_vlm.algorithms.context import StepContext, ViewOutputs
from rl_vlm.algorithms.core import (
    AGG_MODES,
    KL_KINDS,
    aggregate,
    clipped_policy_loss,
    group_advantages,
    kl_estimate,
    masked_sum,
    policy_ratio,
)
from rl_vlm.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from rl_vlm.config import AlgorithmConfig


@dataclass(frozen=True)
class ViewSpec:
    """An extra image view the learner must run the policy on (hook 1).

    The view feeds the *same* prompt and response token ids with transformed ``pixel_values``
    (transforms keep the image size, so the visual-token count is unchanged).
    """

    name: str
    """Key of the view's outputs in :attr:`StepContext.views` and :attr:`LossInputs.views`."""
    with_grad: bool
    """Also recompute the view's log-probs in every update micro-batch with grad (PAPO with
    ``RECOMPUTE_AUG_LOG_PROBS``). False = only the no-grad pre-update pass (PAPO default, VPPO,
    VOGUE)."""
    transform: Callable[[Image, np.random.Generator], Image]
    """Maps one PIL image (already resized to the model's min/max pixels) and a seeded numpy
    generator to the transformed image of the same size."""
    per_response: bool = False
    """Draw a new transform per response (VPPO, §3.2) instead of one per prompt shared by its G
    responses (PAPO, §2.2)."""
    full_kl: bool = False
    """Also return the exact per-token KL between the full next-token distributions with the
    original and the view's images (:attr:`ViewOutputs.kl` and ``kl_rev``): VPPO's and VOGUE's
    paper readings. Costs a second no-grad forward on the original images."""


@dataclass(frozen=True)
class EmaSpec:
    """An EMA copy of the policy kept by the learners (GRPO-CARE §4.1): after every
    ``update_every``-th optimizer step, φ ← decay·φ + (1 − decay)·θ."""

    decay: float
    update_every: int


@dataclass
class RolloutScores:
    """What :meth:`Algorithm.score_rollouts` returns."""

    rewards: torch.Tensor
    """[N] the rewards that enter the advantage (GRPO: the input rewards, unchanged)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Step-level statistics of the scoring (e.g. GRPO-CARE's bonus rate), logged as given."""


@dataclass
class LossInputs:
    """Everything :meth:`Algorithm.loss` sees: ONE micro-batch (n sequences) on ONE rank.

    Per-token tensors are ``[n, T]`` on the learner device, aligned with the micro-batch's
    ``input_ids`` (T = its padded prompt + response width, which may differ between
    micro-batches) and are only meaningful where ``response_mask`` is 1.
    """

    logprobs: torch.Tensor
    """[n, T] log π_θ of each token under the current policy, WITH grad."""
    old_logprobs: torch.Tensor
    """[n, T] log π_old (the rollout policy, recomputed by the learner), no grad."""
    ref_logprobs: torch.Tensor | None
    """[n, T] log π_ref, no grad; None when no reference model is loaded."""
    advantages: torch.Tensor
    """[n, T] per-token advantages from :meth:`Algorithm.compute_advantages`, no grad."""
    response_mask: torch.Tensor
    """[n, T] float, 1 on response tokens (EOS included), 0 on prompt and padding."""
    entropy: torch.Tensor | None
    """[n, T] exact full-vocabulary entropy of the distribution that produced each token; with
    grad when :attr:`Algorithm.needs_entropy_grad`, else detached (metric only) or None."""
    num_tokens: float
    """Σ response_mask over the whole MINI-batch, summed over all ranks."""
    num_seqs: float
    """Number of sequences with ≥ 1 response token in the whole mini-batch, over all ranks."""
    max_response_len: int
    """The configured max response length (Dr. GRPO's constant normaliser)."""
    step: int
    """The current training step, 1-based."""
    total_steps: int
    """The planned number of steps (``trainer.total_steps``)."""
    views: Mapping[str, ViewOutputs] = field(default_factory=dict)
    """View name -> its ``[n, T]`` outputs for these n sequences, one entry per
    :meth:`Algorithm.views` (``logprobs`` set for views ``with_grad``; see the module docstring)."""


@dataclass
class LossTerm:
    """An extra loss term (hook 5): the loss gains ``coef * value``.

    ``value`` is a scalar tensor normalised with the global denominators (normally via
    :func:`~rl_vlm.algorithms.core.aggregate`), so it obeys the same summing contract as
    :attr:`LossOutput.loss`. It is logged unweighted under ``name``; ``metrics`` adds further
    contributions (scalar tensors) that obey the :attr:`LossOutput.metrics` contract.
    """

    name: str
    value: torch.Tensor
    coef: float
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """What :meth:`Algorithm.loss` returns for one micro-batch on one rank.

    Summing contract: both ``loss`` and every entry of ``metrics`` are this micro-batch's
    CONTRIBUTION, normalised with the mini-batch's global denominators, so that summing them
    over all micro-batches on all ranks gives the mini-batch value (for ``loss``: the value
    and the gradient of the loss of the whole mini-batch computed in one piece). The learner
    therefore just adds them up; it must not average. Non-additive statistics (max, min,
    quantiles) do not belong here.
    """

    loss: torch.Tensor
    """Scalar tensor with grad; call backward on it (scaled as the learner's engine needs)."""
    metrics: dict[str, float]
    """Always ``loss``, ``pg_loss`` (the aggregated policy term), ``clip_frac`` (fraction of
    valid tokens whose gradient is cut by clipping, either side or dual), ``clip_frac_high``
    (the part with A > 0), ``clip_frac_low`` (the part with A < 0, dual clip included) and
    ``ratio_mean`` (token-mean of π_θ/π_old). ``kl`` when reference log-probs are given and
    ``entropy`` when entropies are given (both aggregated like the loss, unweighted). Plus each
    extra term's ``name`` and metrics."""


class Algorithm:
    """Plain GRPO (DeepSeekMath) with DAPO clip-higher and dual-clip, algorithms.md §1.1.

    Objective minimised per mini-batch:

        agg( max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)) [dual-clipped at −A·C where A < 0] )
        + β · agg(KL_k(π_θ ‖ π_ref)) − c_H · agg(H[π_θ])

    with A from :func:`~rl_vlm.algorithms.core.group_advantages` and ``agg`` the
    ``cfg.loss_agg`` mode. Dr. GRPO is this class with ``norm_adv_by_std=False`` and
    ``loss_agg="seq-mean-token-sum-norm"``.
    """

    def __init__(self, cfg: AlgorithmConfig) -> None:
        type(self).check_config(cfg)
        self.cfg = cfg

    # ------------------------------------------------------------------ class-level (no instance)
    @classmethod
    def check_config(cls, cfg: AlgorithmConfig) -> None:
        """Raise :class:`~rl_vlm.errors.ConfigError`, naming the key, for what the sub-configs
        cannot check themselves (keys that this algorithm combines). A variant that overrides it
        calls ``super()`` first. Class-level, so :func:`rl_vlm.validation.validate` checks a
        config without building the algorithm."""
        if cfg.loss_agg not in AGG_MODES:
            raise ConfigError(f"algorithm.loss_agg: {cfg.loss_agg!r} is not one of {list(AGG_MODES)}")
        if cfg.kl_estimator not in KL_KINDS:
            raise ConfigError(f"algorithm.kl_estimator: {cfg.kl_estimator!r} is not one of {list(KL_KINDS)}")

    @classmethod
    def has_rollout_views(cls, cfg: AlgorithmConfig) -> bool:
        """Whether :meth:`rollout_views` is non-empty under ``cfg``, known without an instance
        (``data.dynamic_sampling`` filters plain groups only). GRPO: False."""
        return False

    # ------------------------------------------------------------------ capabilities
    @property
    def needs_reference(self) -> bool:
        """Whether the learner must load a frozen reference model (β = kl_coef > 0)."""
        return self.cfg.kl_coef > 0

    @property
    def needs_entropy_grad(self) -> bool:
        """Whether :attr:`LossInputs.entropy` must carry grad (entropy_coef > 0)."""
        return self.cfg.entropy_coef > 0

    def ema_reference(self) -> EmaSpec | None:
        """An EMA reference model the learners must keep and score with (``ctx.ema_logprobs``)."""
        return None

    @property
    def needs_answer_span(self) -> bool:
        """Whether the driver must fill ``ctx.answer_mask`` for the driver-side hooks."""
        return False

    # ------------------------------------------------------------------ hook 1
    def views(self) -> tuple[ViewSpec, ...]:
        """Extra image views to run before/during the update (GRPO: none)."""
        return ()

    def rollout_views(self) -> tuple[ViewSpec, ...]:
        """Views that get their OWN rollouts (VOGUE's paper mode): every prompt is also sampled
        G times on each of these views' images, as extra groups after the raw ones (group-major
        over [raw prompts, view-1 prompts, ...]; ``ctx.branch`` tells them apart). For those
        sequences, a view of :meth:`views` with the same name is evaluated on the RAW images, so
        ``ctx.views[<name>]`` always compares the two branches. Must agree with
        :meth:`has_rollout_views`. GRPO: none."""
        return ()

    def select_for_update(self, advantages: torch.Tensor, group_size: int, ctx: StepContext) -> torch.Tensor | None:
        """[N_keep] long indices of the sequences that enter the policy update (VOGUE's
        per-sample branch choice), or None for all of them (GRPO). N_keep must equal the
        number of raw-branch sequences so the batch arithmetic is unchanged."""
        return None

    # ------------------------------------------------------------------ hook 2
    def score_rollouts(self, rewards: torch.Tensor, sub_scores: Mapping[str, torch.Tensor], group_size: int,
                       ctx: StepContext) -> RolloutScores:
        """Extra per-rollout scoring before advantages (GRPO: no-op).

        Args:
            rewards: [N] overall reward per sequence (group-major, N = B·G).
            sub_scores: [N] each, the reward functions' sub-scores by name (e.g. ``accuracy``).
            group_size: G.
            ctx: the step's response-aligned inputs (mask, log-probs, views, ``step``...).

        Returns:
            The rewards to feed :meth:`compute_advantages` and scoring metrics.
        """
        return RolloutScores(rewards=rewards)

    # ------------------------------------------------------------------ hook 3
    def compute_advantages(self, rewards: torch.Tensor, group_size: int, ctx: StepContext) -> torch.Tensor:
        """Per-token advantages, algorithms.md §1.1: A_{i,t} = A_i · m_{i,t}.

        Args:
            rewards: [N] rewards from :meth:`score_rollouts`, group-major.
            group_size: G.
            ctx: as in :meth:`score_rollouts` (GRPO reads only ``ctx.response_mask``).

        Returns:
            [N, L] float32, 0 off the response.
        """
        mask = ctx.response_mask
        adv = group_advantages(rewards, group_size, norm_by_std=self.cfg.norm_adv_by_std, eps=self.cfg.adv_eps)
        return adv.to(mask.device)[:, None] * mask.float()

    def step_metrics(self) -> dict[str, float]:
        """Step-level statistics of this step's :meth:`compute_advantages` and
        :meth:`select_for_update`, logged by the driver as given (GRPO: none). A variant returns
        ``{**super().step_metrics(), **its own}``."""
        return {}

    # ------------------------------------------------------------------ hook 4
    def token_weights(self, inp: LossInputs) -> torch.Tensor | None:
        """[n, T] per-token weights/masks multiplied into the policy-gradient loss before
        aggregation, or None for all ones (GRPO). The denominators are NOT renormalised to the
        selected tokens, matching VPPO's token-level gradient filtering (§3.1)."""
        return None

    # ------------------------------------------------------------------ hook 5
    def extra_loss_terms(self, inp: LossInputs) -> list[LossTerm]:
        """Additional loss terms with their own metrics (GRPO: none); see :class:`LossTerm`."""
        return []

    # ------------------------------------------------------------------ the loss
    def _agg(self, values: torch.Tensor, inp: LossInputs) -> torch.Tensor:
        """``cfg.loss_agg`` of a per-token [n, T] quantity with the mini-batch's global denominators."""
        return aggregate(values, inp.response_mask, self.cfg.loss_agg, inp.num_tokens, inp.num_seqs,
                         inp.max_response_len)

    def loss(self, inp: LossInputs) -> LossOutput:
        """The micro-batch loss: PG + β·KL − c_H·H + Σ extra terms (see the class docstring).

        Follows the :class:`LossOutput` summing contract: every value is divided by the
        mini-batch's global denominators, never by this micro-batch's own counts.
        """
        cfg, mask = self.cfg, inp.response_mask
        pg_tok, clipped = clipped_policy_loss(inp.logprobs, inp.old_logprobs, inp.advantages,
                                              cfg.clip_low, cfg.clip_high, cfg.clip_dual)
        weights = self.token_weights(inp)
        if weights is not None:
            pg_tok = pg_tok * weights.detach()
        pg_loss = self._agg(pg_tok, inp)
        total = pg_loss
        stats: dict[str, torch.Tensor] = {"pg_loss": pg_loss}

        if inp.ref_logprobs is not None:
            kl = self._agg(kl_estimate(inp.logprobs, inp.ref_logprobs, cfg.kl_estimator), inp)
            stats["kl"] = kl
            if cfg.kl_coef > 0:
                total = total + cfg.kl_coef * kl
        elif cfg.kl_coef > 0:
            raise ValueError("algorithm.kl_coef > 0 but LossInputs.ref_logprobs is None "
                             "(the learner must load the reference model when needs_reference is True)")

        if inp.entropy is not None:
            ent = self._agg(inp.entropy, inp)
            stats["entropy"] = ent
            if cfg.entropy_coef > 0:
                total = total - cfg.entropy_coef * ent
        elif cfg.entropy_coef > 0:
            raise ValueError("algorithm.entropy_coef > 0 but LossInputs.entropy is None")

        for term in self.extra_loss_terms(inp):
            for key in (term.name, *term.metrics):
                if key in stats:
                    raise ValueError(f"extra loss term metric {key!r} collides with an existing metric")
            total = total + term.coef * term.value
            stats[term.name] = term.value
            stats.update(term.metrics)

        with torch.no_grad():
            # Token fractions over the GLOBAL token count, so they too sum over micro-batches.
            denom = max(float(inp.num_tokens), 1.0)
            adv = inp.advantages
            stats["clip_frac"] = masked_sum(clipped, mask) / denom
            stats["clip_frac_high"] = masked_sum(clipped * (adv > 0), mask) / denom
            stats["clip_frac_low"] = masked_sum(clipped * (adv < 0), mask) / denom
            stats["ratio_mean"] = masked_sum(policy_ratio(inp.logprobs, inp.old_logprobs), mask) / denom
        stats["loss"] = total
        # One device->host transfer for all metrics instead of one sync per .item().
        values = torch.stack([v.detach().double().reshape(()) for v in stats.values()]).tolist()
        return LossOutput(loss=total, metrics=dict(zip(stats.keys(), values, strict=True)))
