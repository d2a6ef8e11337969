"""VPPO: Visually-Perceptive Policy Optimization ("Spotlight on Token Perception…", arXiv
2510.09285, ICLR 2026), algorithms.md §3.

Delta from GRPO: one extra no-grad image view (every response gets its own random tile
blackening, p = 0.5, §3.2) that measures how much each sampled token depends on the image, and
three changes driven by that dependency (§3.1, the authors' ``dp_actor.update_policy``):

- Token visual dependency (code): d = clamp(a − ℓ_old, ±20), S_t = clamp(e^d − d − 1, 0, 10),
  the k3 estimate on the sampled token with OLD-policy log-probs (ℓ_old on the original image,
  a on the perturbed one). Fixed during the update. ``vppo.dependency="full_kl"`` is the paper's
  reading (§9.6): the exact KL(P ‖ P′) of the full next-token distributions, which the
  framework computes for views with ``full_kl`` (``views["vppo_mask"].kl``).
- Trajectory-level Advantage Shaping (TAS, driver side, :meth:`Vppo.compute_advantages`):
  S̄_i = token-mean of S over response i; n_i = clamp((S̄_i − lo)/(hi − lo), 0, 1);
  μ = mean of n over the unit's valid sequences; β_max = β_min + (1 − β_min)/(μ + 1e-8);
  α_i = β_min + n_i (β_max − β_min); A_i ← α_i A_i. α has mean exactly 1 over the unit
  (a mean-preserving affine map, §9.7). Sequences without response tokens keep α = 1 and are
  left out of lo, hi and μ; fewer than 2 valid sequences for lo/hi, or hi − lo ≤ 1e-6, give
  α ≡ 1 (§3.5).
- Token-level Gradient Filtering (TGF, learner side, :meth:`Vppo.token_weights`): only the
  k_i = ceil(p·|o_i|) tokens with the largest S_t of each response get policy gradient; the
  loss still divides by ALL valid tokens (§9.8), which the base loss does for token weights.
- Entropy penalty + c_H · mean(−ℓ) (a token-mean of the sampled tokens' NLL, §3.1).

Statistic units (``vppo.stats_scope``). The code takes lo/hi over each rank's mini-batch and μ
over each micro-batch (§3.5: results depend on the micro-batch size and the number of ranks).
``micro_batch`` (default) reproduces that from the step context's ``device_mini_batches`` and
``micro_batches`` (global sequence indices of each unit); ``global`` takes lo, hi and μ
over all the step's valid sequences, independent of how the update is partitioned.

In the code TAS runs only together with TGF (``use_vppo_on_perception``); here the two switches
(``advantage_shaping``, ``token_filtering``) are independent.

Inputs read (see :mod:`rl_vlm.algorithms.base`):

- driver side, response-aligned ``[N, L]``: ``ctx.old_logprobs`` and
  ``ctx.views["vppo_mask"].old_logprobs`` (``sampled_k3``) or ``.kl`` (``full_kl``);
  ``ctx.device_mini_batches`` and ``ctx.micro_batches`` with ``stats_scope="micro_batch"``.
- learner side, input-aligned ``[n, T]``: ``inp.views["vppo_mask"].old_logprobs`` (with
  :attr:`LossInputs.old_logprobs`) for ``sampled_k3``, ``.kl`` (the per-token exact KL of the
  no-grad pre-update pass) for ``full_kl``, so TGF ranks tokens by the same dependency as TAS.

Knobs: :class:`~rl_vlm.algorithms.vppo_config.VppoConfig` (``algorithm.vppo.*``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from rl_vlm.algorithms.base import Algorithm, LossInputs, LossTerm, ViewSpec
from rl_vlm.algorithms.context import ViewOutputs
from rl_vlm.algorithms.core import (
    K3_VALUE_CLAMP,
    LOG_RATIO_CLAMP,
    aggregate,
    masked_sum,
)
from rl_vlm.algorithms.views import TileBlackening
from rl_vlm.algorithms.vppo_config import VppoConfig

if TYPE_CHECKING:
    from rl_vlm.algorithms.context import StepContext
    from rl_vlm.config import AlgorithmConfig

VIEW = "vppo_mask"
"""Name of VPPO's perturbed-image view: its outputs are ``views["vppo_mask"]``."""

RANGE_EPS = 1e-6
"""TAS is skipped (α ≡ 1) when hi − lo ≤ this (the code's threshold, §3.1)."""
MU_EPS = 1e-8
"""ε in β_max = β_min + (1 − β_min)/(μ + ε) (the code's)."""


# ----------------------------------------------------------------------------- pure tensor math
def token_dependency(old_logprobs: torch.Tensor, view_logprobs: torch.Tensor) -> torch.Tensor:
    """S_t of §3.1 (code), ``[N, T]`` -> ``[N, T]``, no grad, unmasked.

    d = clamp(a − ℓ_old, ±20), S = clamp(e^d − d − 1, 0, 10), with ℓ_old = ``old_logprobs``
    (original image) and a = ``view_logprobs`` (perturbed image), both from the old policy.
    Returned in fp32 or wider.
    """
    # At least fp32 (the code's log-probs are fp32): e^d − d − 1 cancels badly in bf16.
    dtype = torch.promote_types(torch.promote_types(old_logprobs.dtype, view_logprobs.dtype), torch.float32)
    d = (view_logprobs.detach().to(dtype) - old_logprobs.detach().to(dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (d.exp() - d - 1.0).clamp(0.0, K3_VALUE_CLAMP)


def trajectory_dependency(dependency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S̄_i = Σ_t S_t m_t / max(Σ_t m_t, 1), ``[N, T]`` -> ``[N]`` (0 for an empty response)."""
    return masked_sum(dependency, mask, dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


def top_fraction_mask(scores: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """TGF mask of §3.1, ``[N, T]`` bool: the k_i = ceil(fraction · Σ_t m_{i,t}) valid tokens of
    each row with the largest ``scores``.

    k is computed in fp32 like the code's (an integer count times a Python float), so e.g.
    ceil(10 · 0.7) = 7 there and here. Ties are broken by position (a stable sort); the code's
    unstable ``torch.sort`` may pick a different tied token, which changes nothing on ties of
    exactly equal scores except which of them is kept.
    """
    valid = mask.bool()
    k = torch.ceil(valid.sum(dim=-1) * fraction)
    ranked = scores.detach().masked_fill(~valid, float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    in_top = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores) < k.unsqueeze(-1)
    keep = torch.zeros_like(valid).scatter(-1, order, in_top)
    return keep & valid


def dependency_range(seq_dependency: torch.Tensor, valid: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(lo, hi) = (min, max) of S̄ over the valid sequences (the code's quantiles 0 and 1), or
    None when fewer than 2 sequences are valid (§3.1 step 1)."""
    scores = seq_dependency[valid]
    if scores.numel() < 2:
        return None
    return scores.min(), scores.max()


def micro_batch_scaling(seq_dependency: torch.Tensor, valid: torch.Tensor,
                        bounds: tuple[torch.Tensor, torch.Tensor] | None, beta_min: float) -> torch.Tensor:
    """α of one statistic unit (§3.1 step 2), ``[m]`` -> ``[m]``.

    ``bounds`` = (lo, hi) from :func:`dependency_range` over the enclosing unit (the rank's
    mini-batch in the code). α = 1 for invalid sequences, and for all when ``bounds`` is None,
    hi − lo ≤ 1e-6 or no sequence of the unit is valid. Otherwise α_i = β_min + n_i(β_max − β_min)
    with n_i = clamp((S̄_i − lo)/(hi − lo), 0, 1) and β_max = β_min + (1 − β_min)/(mean n + 1e-8),
    so the valid α average exactly 1 (up to the 1e-8) unless every n_i is 0, when all are β_min.
    """
    alpha = torch.ones_like(seq_dependency)
    if bounds is None or not bool(valid.any()):
        return alpha
    lo, hi = bounds
    if not bool(hi - lo > RANGE_EPS):
        return alpha
    normalised = ((seq_dependency[valid] - lo) / (hi - lo)).clamp(0.0, 1.0)
    beta_max = beta_min + (1.0 - beta_min) / (normalised.mean() + MU_EPS)
    alpha[valid] = beta_min + normalised * (beta_max - beta_min)
    return alpha


def trajectory_scaling(seq_dependency: torch.Tensor, valid: torch.Tensor, beta_min: float,
                       micro_batches: Sequence[Sequence[int]] | None = None,
                       device_mini_batches: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """TAS factors α ``[N]`` for the step's N sequences (§3.1).

    Args:
        seq_dependency: ``[N]`` S̄ from :func:`trajectory_dependency`.
        valid: ``[N]`` bool, sequences with ≥ 1 response token.
        beta_min: β_min.
        micro_batches: global sequence indices of each update micro-batch (the μ units).
        device_mini_batches: global sequence indices of each (rank, mini-batch) (the lo/hi
            units); every micro-batch must lie inside one of them.

    Both None: one unit over all N (``stats_scope="global"``). Sequences in no micro-batch keep
    α = 1.
    """
    if (micro_batches is None) != (device_mini_batches is None):
        raise ValueError("pass both micro_batches and device_mini_batches, or neither (global statistics)")
    if micro_batches is None or device_mini_batches is None:
        return micro_batch_scaling(seq_dependency, valid, dependency_range(seq_dependency, valid), beta_min)
    n = seq_dependency.shape[0]
    owner: dict[int, int] = {}
    bounds: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for unit, members in enumerate(device_mini_batches):
        idx = _indices(members, n, seq_dependency.device)
        for i in idx.tolist():
            if i in owner:
                raise ValueError(f"sequence {i} is in two device mini-batches")
            owner[i] = unit
        bounds.append(dependency_range(seq_dependency[idx], valid[idx]))
    alpha = torch.ones_like(seq_dependency)
    for members in micro_batches:
        idx = _indices(members, n, seq_dependency.device)
        if idx.numel() == 0:
            continue
        units = {owner.get(i) for i in idx.tolist()}
        home = units.pop() if len(units) == 1 else None
        if home is None:
            raise ValueError(f"micro-batch {list(members)} does not lie inside one device mini-batch")
        alpha[idx] = micro_batch_scaling(seq_dependency[idx], valid[idx], bounds[home], beta_min)
    return alpha


def vppo_shape(old_logprobs: torch.Tensor, view_logprobs: torch.Tensor, advantages: torch.Tensor,
               response_mask: torch.Tensor, mb_old_logprobs: torch.Tensor, mb_view_logprobs: torch.Tensor,
               mb_response_mask: torch.Tensor, top_p: float, beta_min: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch of the code's TAS + TGF (§3.6), for comparison with the authors' inline code.

    The first four arguments are the micro-batch ``[m, L]``; ``mb_*`` its rank's whole
    mini-batch ``[M, L]`` (for lo/hi). Returns (α-scaled advantages ``[m, L]``, TGF mask
    ``[m, L]`` in the advantages' dtype).
    """
    mb_mask = mb_response_mask.to(advantages.dtype)
    mask = response_mask.to(advantages.dtype)
    mb_seq = trajectory_dependency(token_dependency(mb_old_logprobs, mb_view_logprobs), mb_mask)
    bounds = dependency_range(mb_seq, mb_mask.sum(-1) > 0)
    dep = token_dependency(old_logprobs, view_logprobs)
    alpha = micro_batch_scaling(trajectory_dependency(dep, mask), mask.sum(-1) > 0, bounds, beta_min)
    keep = top_fraction_mask(dep, mask, top_p)
    return advantages * alpha.unsqueeze(-1), keep.to(advantages.dtype)


def _indices(members: Sequence[int], n: int, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(list(members), dtype=torch.long, device=device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"sequence index out of range [0, {n}) in {list(members)}")
    return idx


# ----------------------------------------------------------------------------- the algorithm
class Vppo(Algorithm):
    """VPPO (§3): GRPO + TAS on the advantages, TGF on the PG tokens, an entropy penalty.

    See the module docstring for the math and the inputs each side reads.

    Loss-term metrics (summing contract): ``vppo/entropy_penalty`` (token-mean of −ℓ,
    unweighted), ``vppo/dependency_mean`` (token-mean of S_t), ``vppo/kept_frac`` (fraction of
    valid tokens that TGF keeps; 1 with filtering off).

    Driver-side statistics of the last :meth:`compute_advantages` call are in
    :meth:`step_metrics` (plain floats, logged by the framework as given):
    ``vppo/alpha_min``/``alpha_max``/``alpha_mean`` over the valid sequences and
    ``vppo/traj_dependency_mean`` (their mean S̄); none when shaping is off.
    """

    def __init__(self, cfg: AlgorithmConfig) -> None:
        super().__init__(cfg)
        v = cfg.vppo  # validated itself (VppoConfig.__post_init__)
        self._vppo_transform = TileBlackening(patch_size=v.patch_size, prob=v.mask_prob)
        self._vppo_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ hook 1
    def views(self) -> tuple[ViewSpec, ...]:
        """The perturbed image, a new mask per response, no grad (§3.2, §3.3 step 4)."""
        own = ViewSpec(name=VIEW, with_grad=False, transform=self._vppo_transform, per_response=True,
                       full_kl=self.cfg.vppo.dependency == "full_kl")
        return (*super().views(), own)

    def _dependency(self, old_logprobs: torch.Tensor, views: Mapping[str, ViewOutputs], side: str) -> torch.Tensor:
        if self.cfg.vppo.dependency == "full_kl":
            # Exact KL is ≥ 0; the clamp only removes round-off below zero.
            return _view_tensor(views, "kl", side).detach().clamp_min(0.0)
        return token_dependency(old_logprobs, _view_tensor(views, "old_logprobs", side))

    # ------------------------------------------------------------------ hook 3: TAS
    def compute_advantages(self, rewards: torch.Tensor, group_size: int, ctx: StepContext) -> torch.Tensor:
        """super()'s advantages × α_i (TAS, §3.1); unchanged when ``advantage_shaping`` is off.

        Driver side: every ``ctx`` tensor is response-aligned ``[N, L]``.
        """
        adv = super().compute_advantages(rewards, group_size, ctx)
        v = self.cfg.vppo
        if not v.advantage_shaping:
            return adv
        mask = ctx.response_mask.to(adv.device).float()
        dep = self._dependency(ctx.old_logprobs, ctx.views, "driver").to(adv.device).float()
        seq_dep = trajectory_dependency(dep, mask)
        valid = mask.sum(-1) > 0
        if v.stats_scope == "global":
            alpha = trajectory_scaling(seq_dep, valid, v.beta_min)
        else:
            alpha = trajectory_scaling(seq_dep, valid, v.beta_min, ctx.micro_batches, ctx.device_mini_batches)
        self._record(alpha, seq_dep, valid)
        return adv * alpha.to(adv.dtype).unsqueeze(-1)

    def step_metrics(self) -> dict[str, float]:
        return {**super().step_metrics(), **self._vppo_metrics}

    def _record(self, alpha: torch.Tensor, seq_dep: torch.Tensor, valid: torch.Tensor) -> None:
        a = alpha[valid]
        if a.numel() == 0:
            stats = {"vppo/alpha_min": 1.0, "vppo/alpha_max": 1.0, "vppo/alpha_mean": 1.0,
                     "vppo/traj_dependency_mean": 0.0}
        else:
            stats = {"vppo/alpha_min": float(a.min()), "vppo/alpha_max": float(a.max()),
                     "vppo/alpha_mean": float(a.mean()), "vppo/traj_dependency_mean": float(seq_dep[valid].mean())}
        self._vppo_metrics = stats

    # ------------------------------------------------------------------ hook 4: TGF
    def _keep_mask(self, inp: LossInputs) -> torch.Tensor:
        dep = self._dependency(inp.old_logprobs, inp.views, "learner")
        return top_fraction_mask(dep, inp.response_mask, self.cfg.vppo.top_p_tokens)

    def token_weights(self, inp: LossInputs) -> torch.Tensor | None:
        """super()'s weights × the TGF mask (top ceil(p·|o_i|) tokens by S_t, §3.1)."""
        weights = super().token_weights(inp)
        if not self.cfg.vppo.token_filtering:
            return weights
        keep = self._keep_mask(inp).to(inp.logprobs.dtype)
        return keep if weights is None else weights * keep

    # ------------------------------------------------------------------ hook 5
    def extra_loss_terms(self, inp: LossInputs) -> list[LossTerm]:
        """+c_H · token-mean(−ℓ) (the code's ``VF.masked_mean``, always token-level), carrying
        the dependency metrics; returned with coefficient 0 when the penalty is off."""
        mask = inp.response_mask
        num_tokens = max(float(inp.num_tokens), 1.0)
        penalty = aggregate(-inp.logprobs, mask, "token-mean", inp.num_tokens, inp.num_seqs, inp.max_response_len)
        with torch.no_grad():
            dep = self._dependency(inp.old_logprobs, inp.views, "learner")
            keep = self._keep_mask(inp) if self.cfg.vppo.token_filtering else mask.bool()
            metrics = {"vppo/dependency_mean": masked_sum(dep.to(mask.dtype), mask) / num_tokens,
                       "vppo/kept_frac": masked_sum(keep.to(mask.dtype), mask) / num_tokens}
        own = LossTerm(name="vppo/entropy_penalty", value=penalty, coef=self.cfg.vppo.entropy_penalty,
                       metrics=metrics)
        return [*super().extra_loss_terms(inp), own]


def _view_tensor(views: Mapping[str, ViewOutputs], which: str, side: str) -> torch.Tensor:
    """``views[VIEW].<which>``, or a KeyError naming the missing input."""
    view = views.get(VIEW)
    value = None if view is None else getattr(view, which)
    if value is None:
        where = "StepContext.views ([N, L], response-aligned)" if side == "driver" else \
            "LossInputs.views ([n, T], input-aligned)"
        raise KeyError(f"VPPO needs views[{VIEW!r}].{which} in {where}; got views {sorted(views)}")
    return value


__all__ = ["VIEW", "Vppo", "VppoConfig", "dependency_range", "micro_batch_scaling", "token_dependency",
           "top_fraction_mask", "trajectory_dependency", "trajectory_scaling", "vppo_shape"]
