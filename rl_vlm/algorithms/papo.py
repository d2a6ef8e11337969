"""PAPO: Perception-Aware Policy Optimization (arXiv 2507.06448, ICLR 2026), algorithms.md §2.

Delta from GRPO (§2.1, the authors' ``dp_actor.update_policy``): one extra image view, the
prompt's image with random 14-px tiles blacked out, and three extra loss terms. Minimised per
mini-batch (ℓ = log π_θ(o_t | q, I), a = log π(o_t | q, I_mask)):

    GRPO loss − γ_t · agg(KL_prcp) + η_ori · ρ_t · mean(−ℓ) + η_aug · ρ_t · mean(−a)

- KL_prcp,t = k3(ℓ_t, a_t) = e^{a−ℓ} − (a−ℓ) − 1 (clamped as in §1.1): the standard estimator of
  KL(π_θ(·|I) ‖ π(·|I_mask)) on tokens sampled with the original image. Its negative is
  minimised, so the policy is pushed to depend on the image: ∂/∂ℓ [−γ k3] = −γ (1 − e^{a−ℓ}).
  The paper writes the inverse ratio r^prcp = π/π_mask (§9.1); the code's version is used.
- a is, by default, the OLD policy's masked-image log-prob, computed once before the update
  without grad (``views["papo_mask"].old_logprobs``): the code's ``RECOMPUTE_AUG_LOG_PROBS=False``.
  Then the η_aug term has no gradient and is effectively a metric (§9.2, §9.3).
  ``papo.recompute_with_grad`` is the paper's reading: a is recomputed with the current policy
  in every micro-batch, WITH grad (``views["papo_mask"].logprobs``), so both KL_prcp and the
  η_aug term also train the masked-image branch.
- The entropy terms are the NLL of the sampled tokens with a + sign: an entropy PENALTY
  (the paper's −η·H with H = log π, written for a maximised objective).
- γ_t = γ under the default fixed schedule; ``papo.schedule="annealing"`` goes linearly from
  γ_start to γ_end (§2.1 ``AnnealingKLController``), and ρ_t = γ_t/γ scales both entropy terms.
- Optional, off by default (§2.1): a per-sequence token mask keeping KL_prcp ≥ its
  (1 − q)-quantile, then clipping KL_prcp to [0, kl_clip]; the code applies them in this order.

Knobs: :class:`~rl_vlm.algorithms.papo_config.PapoConfig` (``algorithm.papo.*``; its defaults are
PAPO-G's). Presets: ``configs/algorithm/papo.yaml`` (PAPO-G) and ``papo_d.yaml`` (PAPO-D), §2.4.

Aggregation — where this deliberately differs from the authors. Every term is normalised with
the mini-batch's GLOBAL denominators (:class:`~rl_vlm.algorithms.base.LossOutput` summing
contract): KL_prcp with ``algorithm.loss_agg`` (the code's ``average_loss`` mode), both entropy
terms always as a token-mean (the code's ``VF.masked_mean``). With the default ``token-mean``
this is the exact token-mean over the whole mini-batch on all ranks. PAPO's fork (older EasyR1,
§1.1 "unit") instead averages micro-batch token-means (÷ gradient accumulation, then over
ranks); the two agree when every micro-batch holds the same number of response tokens and
otherwise differ only in how tokens of short and long micro-batches are weighted. A global
token-mean does not depend on the micro-batch size, which the authors' does.

Masking (§2.2): the authors blacken tiles of the RAW image before resizing to the model's
min/max pixels; the framework hands view transforms the already-resized image (the
:class:`~rl_vlm.algorithms.base.ViewSpec` contract), so our tiles are 14 resized pixels, i.e.
14/s raw pixels for a resize factor s (s ≈ 1 for images already inside the pixel range).
The mask is drawn once per prompt and step and shared by its G responses, as in the code.
The dataset-provided ``image_aug`` (semantic masking) of the code is not supported; the site's
ablation finds random masking better.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rl_vlm.algorithms.base import Algorithm, LossInputs, LossTerm, ViewSpec
from rl_vlm.algorithms.core import (
    KLKind,
    aggregate,
    kl_estimate,
    masked_row_quantile,
)
from rl_vlm.algorithms.papo_config import PapoConfig
from rl_vlm.algorithms.views import TileBlackening

if TYPE_CHECKING:
    from rl_vlm.algorithms.context import StepContext
    from rl_vlm.config import AlgorithmConfig

VIEW = "papo_mask"
"""Name of PAPO's masked-image view: its outputs are ``views["papo_mask"]``."""


def perception_kl(logprobs: torch.Tensor, view_logprobs: torch.Tensor, mask: torch.Tensor,
                  kind: KLKind = "k3", clip: float = 0.0, token_quantile: float = 0.0) -> torch.Tensor:
    """Per-token KL_prcp of §2.1, ``[N, T]`` (unmasked; aggregate it with ``mask``).

    Args:
        logprobs: ``[N, T]`` ℓ, original image, current policy (with grad).
        view_logprobs: ``[N, T]`` a, masked image (θ_old without grad by default, or the
            current policy with grad under ``recompute_with_grad``).
        mask: ``[N, T]`` response mask; only used by the token-level quantile mask.
        kind: the estimator (``k3`` = the code's ``low_var_kl``), in the code's argument order
            ``compute_kl(log_probs, ref_log_probs=aug_log_probs)``.
        clip: > 0 clamps the result to [0, clip] (``use_kl_prcp_clipping``).
        token_quantile: q in (0, 1) keeps only tokens whose KL_prcp ≥ the (1 − q)-quantile of
            their sequence's valid tokens (``use_kl_prcp_token_level_mask``); 0 = off. The
            threshold carries no gradient; dropped tokens are zeroed, not removed from the
            denominator.

    The code applies the token mask first, then the clip.
    """
    kl = kl_estimate(logprobs, view_logprobs, kind)
    if token_quantile > 0:
        kl = kl * quantile_token_mask(kl, mask, token_quantile).to(kl.dtype)
    if clip > 0:
        kl = kl.clamp(0.0, clip)
    return kl


def quantile_token_mask(kl: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """``[N, T]`` bool, True where KL_prcp ≥ its sequence's (1 − q)-quantile over valid tokens
    (§2.1 ``use_kl_prcp_token_level_mask``; ``torch.nanquantile``, linear interpolation).

    True also on padding whose value passes the threshold; the aggregation masks it out, as in
    the code. A sequence without valid tokens is all False. No gradient.
    """
    threshold = masked_row_quantile(kl, mask, 1.0 - q)
    return kl.detach().to(threshold.dtype) >= threshold


def annealed_gamma(step: int, total_steps: int, start: float, end: float, ratio: float) -> float:
    """γ_t of the ``annealing`` schedule (§2.1, the code's ``AnnealingKLController``).

    Linear from ``start`` to ``end`` over ``max(1, int(total_steps · ratio))`` steps, then
    ``end``. ``step`` is 1-based; the code reads the coefficient before stepping its
    controller, so step 1 uses ``start``.
    """
    horizon = max(1, int(total_steps * ratio))
    progress = min(max(step - 1, 0) / horizon, 1.0)
    return start + (end - start) * progress


class Papo(Algorithm):
    """PAPO (§2): GRPO + implicit perception loss −γ·KL_prcp + double entropy penalty.

    See the module docstring for the objective, the code-vs-paper options and the aggregation.
    Inputs read:

    - learner side, input-aligned ``[n, T]``: ``inp.views["papo_mask"].old_logprobs`` (default)
      or ``.logprobs`` with grad (``papo.recompute_with_grad``); ``inp.step`` and
      ``inp.total_steps`` under the annealing schedule.
    - driver side: ``ctx.step``/``ctx.total_steps`` (only to report γ_t in :meth:`step_metrics`).

    Loss-term metrics (summing contract, unweighted): ``papo/kl_prcp`` (agg of KL_prcp after
    the optional mask/clip), ``papo/entropy_ori`` (token-mean of −ℓ), ``papo/entropy_aug``
    (token-mean of −a); with the token mask also ``papo/kl_prcp_kept_frac``.
    """

    def __init__(self, cfg: AlgorithmConfig) -> None:
        super().__init__(cfg)  # cfg.papo validated itself (PapoConfig.__post_init__)
        p = cfg.papo
        self._papo_transform = TileBlackening(patch_size=p.patch_size, prob=p.mask_prob)
        self._papo_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ hook 1
    def views(self) -> tuple[ViewSpec, ...]:
        """The masked image, one mask per prompt per step (§2.2); with grad only under
        ``papo.recompute_with_grad`` (§2.3 step 7)."""
        own = ViewSpec(name=VIEW, with_grad=self.cfg.papo.recompute_with_grad, transform=self._papo_transform,
                       per_response=False)
        return (*super().views(), own)

    # ------------------------------------------------------------------ hook 3 (bookkeeping only)
    def compute_advantages(self, rewards: torch.Tensor, group_size: int, ctx: StepContext) -> torch.Tensor:
        """Unchanged advantages (PAPO only adds loss terms); records this step's γ_t and ρ_t for
        :meth:`step_metrics` as ``papo/gamma`` and ``papo/entropy_scale`` (driver side, where a
        step-level scalar can be logged as is)."""
        adv = super().compute_advantages(rewards, group_size, ctx)
        gamma = self.gamma_at(ctx.step, ctx.total_steps)
        self._papo_metrics = {"papo/gamma": gamma, "papo/entropy_scale": self._entropy_scale(gamma)}
        return adv

    def step_metrics(self) -> dict[str, float]:
        return {**super().step_metrics(), **self._papo_metrics}

    # ------------------------------------------------------------------ hook 5
    def gamma_at(self, step: int, total_steps: int) -> float:
        """γ_t at ``step`` of ``total_steps`` (both matter only when annealing)."""
        p = self.cfg.papo
        if p.schedule == "fixed":
            return p.gamma
        start = p.gamma if p.gamma_start is None else p.gamma_start
        return annealed_gamma(step, total_steps, start, p.gamma_end, p.annealing_ratio)

    def _entropy_scale(self, gamma: float) -> float:
        # The code's discount ratio kl_prcp_coef_t / kl_prcp_coef (1 without annealing).
        return 1.0 if self.cfg.papo.schedule == "fixed" else gamma / self.cfg.papo.gamma

    def extra_loss_terms(self, inp: LossInputs) -> list[LossTerm]:
        """−γ_t·KL_prcp, +η_ori·ρ_t·mean(−ℓ), +η_aug·ρ_t·mean(−a) (§2.1), after super()'s terms.

        All three are always returned, with coefficient 0 when switched off, so their metrics
        are logged in every configuration.
        """
        p = self.cfg.papo
        which = "logprobs" if p.recompute_with_grad else "old_logprobs"
        view = inp.views.get(VIEW)
        aug = None if view is None else getattr(view, which)
        if aug is None:
            raise KeyError(f"PAPO needs LossInputs.views[{VIEW!r}].{which} (the masked view's log-probs, "
                           f"input-aligned [n, T]); got views {sorted(inp.views)}")
        if not p.recompute_with_grad:
            aug = aug.detach()
        mask = inp.response_mask
        gamma = self.gamma_at(inp.step, inp.total_steps)
        rho = self._entropy_scale(gamma)

        kl_tok = perception_kl(inp.logprobs, aug, mask, p.kl_estimator, p.kl_clip, p.token_mask_quantile)
        kl_prcp = self._agg(kl_tok, inp)
        # The code's entropy terms are VF.masked_mean, a token-mean whatever loss_agg says.
        ent_ori = aggregate(-inp.logprobs, mask, "token-mean", inp.num_tokens, inp.num_seqs, inp.max_response_len)
        ent_aug = aggregate(-aug, mask, "token-mean", inp.num_tokens, inp.num_seqs, inp.max_response_len)

        kl_metrics: dict[str, torch.Tensor] = {}
        if p.token_mask_quantile > 0:
            with torch.no_grad():
                kept = quantile_token_mask(kl_estimate(inp.logprobs, aug, p.kl_estimator), mask,
                                           p.token_mask_quantile)
                kl_metrics["papo/kl_prcp_kept_frac"] = aggregate(
                    kept.to(mask.dtype), mask, "token-mean", inp.num_tokens, inp.num_seqs, inp.max_response_len)
        own = [
            LossTerm(name="papo/kl_prcp", value=kl_prcp, coef=-gamma, metrics=kl_metrics),
            LossTerm(name="papo/entropy_ori", value=ent_ori, coef=p.entropy_ori * rho),
            LossTerm(name="papo/entropy_aug", value=ent_aug, coef=p.entropy_aug * rho),
        ]
        return [*super().extra_loss_terms(inp), *own]


__all__ = ["VIEW", "Papo", "PapoConfig", "annealed_gamma", "perception_kl", "quantile_token_mask"]
