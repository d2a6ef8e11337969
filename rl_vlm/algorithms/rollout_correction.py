"""Rollout correction: importance weights between the policy that sampled a response and the
policy the update's trust region is centred on (docs/algorithms.md, "Rollout correction").

Two distributions differ even when the weights are the same: the engine samples with its own
kernels and precision (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"), and with ``trainer.max_staleness`` = k >= 1 a response was sampled by
weights up to k updates old. The driver then has, per response token,

    b_t = log π_behav(y_t)   the engine's log-prob at the sample's weight version
    p_t = log π_prox(y_t)    the learner's recomputed log-prob at its current weights (π_old)

and the clipped surrogate is taken around π_prox (decoupled PPO, Fu et al. 2025, AReaL, eq. 5):

    J = E_{y ~ π_behav} [ w · min(r A, clip(r, 1 − ε_low, 1 + ε_high) A) ],   r = π_θ / π_prox,
    ρ = π_prox / π_behav   (per token, or Π_t over the response at ``level=sequence``)
    TIS:  w = min(ρ, C)                (Yao et al. 2025, truncated importance sampling)
    MIS:  w = ρ · 1[ρ <= C]            (masked IS: the token or response is left out, its
                                        tokens stay in the loss's denominators)

Because w >= 0 does not depend on θ, w · max(−A r, −A clip(r)) = max(−(wA) r, −(wA) clip(r))
and the dual clip scales the same way: the driver multiplies the per-token advantages by w and
the loss is unchanged (the KL and entropy terms are not weighted, as in verl's ``rollout_corr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from rl_vlm.algorithms.core import LOG_RATIO_CLAMP
from rl_vlm.algorithms.rollout_correction_config import RolloutCorrectionConfig


@dataclass
class Correction:
    weights: list[torch.Tensor] | None
    """Per response, ``[len(response)]`` weights w to multiply its advantages by; None for
    ``mode=none``."""
    metrics: dict[str, float]
    """``rollout_corr/*``: ρ's mean and max over tokens, KL(behaviour ‖ proximal) (k1 and k3
    estimates under the behaviour samples), and with a mode the weights' mean and max and the
    token fraction whose ρ exceeded the cap (truncated or masked)."""


def rollout_correction(proximal: Sequence[torch.Tensor], behaviour: Sequence[torch.Tensor] | Sequence[Sequence[float]],
                       cfg: RolloutCorrectionConfig) -> Correction:
    """Importance weights ρ = π_prox/π_behav, truncated (TIS) or masked (MIS) at ``cfg.cap``, per
    token or per sequence (module docstring for the equations).

    Args:
        proximal: per response, ``[len]`` learner log-probs p_t (no grad).
        behaviour: per response, ``[len]`` engine log-probs b_t of the same tokens.
    """
    lengths = [len(p) for p in proximal]
    if [len(b) for b in behaviour] != lengths:
        raise ValueError("proximal and behaviour log-probs must have the same length per response")
    prox = pad_sequence([p.float() for p in proximal], batch_first=True)
    behav = pad_sequence([torch.as_tensor(b, dtype=torch.float32) for b in behaviour], batch_first=True)
    mask = pad_sequence([torch.ones(n) for n in lengths], batch_first=True)
    log_ratio = ((prox - behav) * mask).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    tokens = max(mask.sum().item(), 1.0)
    token_ratio = torch.exp(log_ratio)
    metrics = {
        "rollout_corr/ratio_mean": (token_ratio * mask).sum().item() / tokens,
        "rollout_corr/ratio_max": (token_ratio * mask).max().item(),
        # KL(π_behav ‖ π_prox) under samples from π_behav: k1 = −log ρ, k3 = ρ − 1 − log ρ.
        "rollout_corr/kl": (-log_ratio * mask).sum().item() / tokens,
        "rollout_corr/k3_kl": ((token_ratio - 1 - log_ratio) * mask).sum().item() / tokens,
    }
    if cfg.mode == "none":
        return Correction(None, metrics)
    if cfg.level == "sequence":
        seq = log_ratio.sum(dim=1, keepdim=True).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        rho = torch.exp(seq).expand_as(log_ratio)
    else:
        rho = token_ratio
    over = rho > cfg.cap
    w = rho.clamp(max=cfg.cap) if cfg.mode == "tis" else torch.where(over, torch.zeros_like(rho), rho)
    w = w * mask
    metrics.update({
        "rollout_corr/weight_mean": w.sum().item() / tokens,
        "rollout_corr/weight_max": w.max().item(),
        "rollout_corr/capped_frac": (over.float() * mask).sum().item() / tokens,
    })
    return Correction([w[i, :n].clone() for i, n in enumerate(lengths)], metrics)


__all__ = ["Correction", "rollout_correction"]
