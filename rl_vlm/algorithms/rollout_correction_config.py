"""Rollout correction's knobs, ``algorithm.rollout_correction.*`` (docs/algorithms.md, "Rollout
correction"): definition, defaults, validation.

The math is in :mod:`rl_vlm.algorithms.rollout_correction`. This module imports no torch, so
:mod:`rl_vlm.config` can hold a :class:`RolloutCorrectionConfig` without importing the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rl_vlm.errors import require

CorrectionMode = Literal["none", "tis", "mis"]
CorrectionLevel = Literal["token", "sequence"]


@dataclass(frozen=True)
class RolloutCorrectionConfig:
    """Importance weights between the behaviour policy (the engine that sampled, at the
    sample's weight version) and the proximal policy (the learner's recomputed log-probs).

    Defaults: verl's ``rollout_corr`` and ms-swift's TIS/MIS, threshold 2.0 (Yao et al. 2025).
    """

    mode: CorrectionMode = "none"
    """``none``: no weight (the diagnostics are still logged); ``tis``: truncated IS,
    w = min(ρ, cap); ``mis``: masked IS, w = ρ where ρ <= cap and 0 elsewhere."""
    level: CorrectionLevel = "token"
    """``token``: ρ per token; ``sequence``: one ρ = Π_t ρ_t per response, on all its tokens."""
    cap: float = 2.0
    """C, the truncation (TIS) or masking (MIS) threshold on ρ; must be > 1."""

    def __post_init__(self) -> None:
        key = "algorithm.rollout_correction."
        require(self.mode in ("none", "tis", "mis"), key + "mode", "must be 'none', 'tis' or 'mis'", self.mode)
        require(self.level in ("token", "sequence"), key + "level", "must be 'token' or 'sequence'", self.level)
        require(self.cap > 1, key + "cap", "must be > 1 (weights at or below 1 only shrink the update)", self.cap)


__all__ = ["RolloutCorrectionConfig"]
