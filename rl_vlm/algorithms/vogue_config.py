"""VOGUE's knobs, ``algorithm.vogue.*`` (algorithms.md §5): definition, defaults, validation.

The hooks that read them are in :mod:`rl_vlm.algorithms.vogue`. This module imports no torch, so
:mod:`rl_vlm.config` can hold a :class:`VogueConfig` without importing the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rl_vlm.errors import require


@dataclass(frozen=True)
class VogueConfig:
    """VOGUE / DUPL, algorithms.md §5 (defaults: the released code, §5.3)."""

    mode: Literal["code", "paper"] = "code"
    """``code``: raw-image rollouts only, the noisy image only shapes their advantages
    (sampled-token symmetric KL, entropy cap by the shaped advantage), one branch draw per
    step (§5.2); ``paper``: separate noisy-branch rollouts, full-distribution symmetric KL, caps
    by the base |A| and a per-sample branch choice (§5.1, Algorithm 1)."""
    noise_std: float = 0.2
    """σ of the Gaussian pixel noise on [0, 1] pixels (``gaussian_noise_std``; the scripts use
    0.2, the paper reports 0.4)."""
    augmentation_strength: float = 1.0
    """s: scales the noise σ and the colour jitter (brightness/contrast 0.15·s)."""
    rotation_degrees: float = 10.0
    """Rotation angle drawn uniformly in ±this, without expand (size kept)."""
    alpha_p: float = 1.0
    """Weight of the perceptual-uncertainty bonus (``kl_penalty_weight``); its sign is kept."""
    beta_p: float = 2.0
    """Its cap |A|/β_p (hard-coded 2 in the code)."""
    entropy_shaping: bool = True
    """Add the output-uncertainty (entropy) bonus (``use_entropy_shaping``)."""
    alpha_o: float = 0.4
    beta_o: float = 2.0
    """Output-uncertainty bonus min(α_o·H, |A|/β_o)."""
    schedule: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive``: branch probability max(0, 1 − step/total); ``fixed``: ``fixed_prob``."""
    fixed_prob: float = 0.5
    seed: int = 0
    """Seed of the branch draws, mixed with the step so that a resumed run repeats them."""

    def __post_init__(self) -> None:
        key = "algorithm.vogue."
        require(self.noise_std >= 0, key + "noise_std", "must be >= 0", self.noise_std)
        require(self.augmentation_strength >= 0, key + "augmentation_strength", "must be >= 0",
                self.augmentation_strength)
        require(0 <= self.rotation_degrees <= 180, key + "rotation_degrees", "must be in [0, 180]",
                self.rotation_degrees)
        require(self.beta_p > 0, key + "beta_p", "must be > 0", self.beta_p)
        require(self.alpha_o >= 0, key + "alpha_o", "must be >= 0", self.alpha_o)
        require(self.beta_o > 0, key + "beta_o", "must be > 0", self.beta_o)
        require(0 <= self.fixed_prob <= 1, key + "fixed_prob", "must be in [0, 1]", self.fixed_prob)
        require(self.seed >= 0, key + "seed", "must be >= 0", self.seed)
        require(self.mode in ("code", "paper"), key + "mode", "must be 'code' or 'paper'", self.mode)
        require(self.schedule in ("adaptive", "fixed"), key + "schedule", "must be 'adaptive' or 'fixed'",
                self.schedule)
        # Paper mode's g_per is a capped bonus; the code keeps the sign (its KL-transition phase).
        require(self.mode != "paper" or self.alpha_p >= 0, key + "alpha_p",
                "paper mode needs alpha_p >= 0 (g_per is a capped bonus)", self.alpha_p)


__all__ = ["VogueConfig"]
