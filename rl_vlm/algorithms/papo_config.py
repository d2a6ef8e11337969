"""PAPO's knobs, ``algorithm.papo.*`` (algorithms.md §2): definition, defaults, validation.

The hooks that read them are in :mod:`rl_vlm.algorithms.papo`. This module imports no torch, so
:mod:`rl_vlm.config` can hold a :class:`PapoConfig` without importing the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from rl_vlm.errors import require

KLKind = Literal["k1", "k2", "k3", "abs"]


@dataclass(frozen=True)
class PapoConfig:
    """PAPO, algorithms.md §2 (defaults: the authors' PAPO-G 7B script, §2.4)."""

    gamma: float = 0.02
    """γ of the implicit perception loss −γ·KL_prcp (``kl_prcp_coef``)."""
    kl_estimator: KLKind = "k3"
    """Estimator of KL_prcp(π_θ(·|I) ‖ π(·|I_mask)); k3 = ``low_var_kl`` as in the code."""
    entropy_ori: float = 0.05
    """η_ori: coefficient of the original-image entropy term +η·mean(−ℓ) (0 = off)."""
    entropy_aug: float = 0.05
    """η_aug: coefficient of the masked-image entropy term +η·mean(−a) (no gradient unless
    ``recompute_with_grad``)."""
    mask_prob: float = 0.6
    """Probability that a 14-px tile is blacked out (one mask per prompt and step). The authors
    tile the raw image; here the tiles are drawn on the already-resized image (§2.2)."""
    patch_size: int = 14
    recompute_with_grad: bool = False
    """The paper's reading: recompute the masked-image log-probs in every update micro-batch
    WITH gradient (``RECOMPUTE_AUG_LOG_PROBS=True``); False = the code's frozen θ_old values."""
    kl_clip: float = 0.0
    """> 0: clamp KL_prcp to [0, kl_clip] (``use_kl_prcp_clipping``, 0.2 in the code)."""
    token_mask_quantile: float = 0.0
    """> 0: keep only tokens whose KL_prcp ≥ the per-sequence (1 − q)-quantile
    (``use_kl_prcp_token_level_mask``, q = 0.2 in the code); must be < 1."""
    schedule: Literal["fixed", "annealing"] = "fixed"
    """``annealing``: γ goes linearly from ``gamma_start`` to ``gamma_end`` over
    ``annealing_ratio`` of the run's steps, then stays at ``gamma_end``; the entropy terms are
    scaled by γ_t/γ (``AnnealingKLController``)."""
    gamma_start: float | None = None
    """Start of the annealing; None = ``gamma`` (the code's default ``start_value``)."""
    gamma_end: float = 0.0
    annealing_ratio: float = 0.5
    """Fraction of trainer.total_steps over which γ is annealed (the code's default 0.5)."""

    def __post_init__(self) -> None:
        key = "algorithm.papo."
        require(self.gamma >= 0, key + "gamma", "must be >= 0", self.gamma)
        require(self.kl_estimator in get_args(KLKind), key + "kl_estimator",
                f"must be one of {list(get_args(KLKind))}", self.kl_estimator)
        require(self.entropy_ori >= 0, key + "entropy_ori", "must be >= 0", self.entropy_ori)
        require(self.entropy_aug >= 0, key + "entropy_aug", "must be >= 0", self.entropy_aug)
        require(0 <= self.mask_prob <= 1, key + "mask_prob", "must be in [0, 1]", self.mask_prob)
        require(self.patch_size >= 1, key + "patch_size", "must be >= 1", self.patch_size)
        require(self.kl_clip >= 0, key + "kl_clip", "must be >= 0 (0 = off)", self.kl_clip)
        require(0 <= self.token_mask_quantile < 1, key + "token_mask_quantile", "must be in [0, 1) (0 = off)",
                self.token_mask_quantile)
        require(self.schedule in ("fixed", "annealing"), key + "schedule", "must be 'fixed' or 'annealing'",
                self.schedule)
        if self.schedule == "annealing":
            # ρ_t = γ_t / γ scales the entropy terms, so γ itself must be positive.
            require(self.gamma > 0, key + "gamma", "must be > 0 with schedule=annealing", self.gamma)
            require(self.gamma_start is None or self.gamma_start >= 0, key + "gamma_start", "must be >= 0",
                    self.gamma_start)
            require(self.gamma_end >= 0, key + "gamma_end", "must be >= 0", self.gamma_end)
            require(self.annealing_ratio > 0, key + "annealing_ratio", "must be > 0", self.annealing_ratio)


__all__ = ["PapoConfig"]
