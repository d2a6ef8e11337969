"""GRPO-CARE's knobs, ``algorithm.care.*`` (algorithms.md §4): definition, defaults, validation.

The hooks that read them are in :mod:`rl_vlm.algorithms.care`, which also checks the one rule
that spans keys (``algorithm.kl_coef`` must be 0). This module imports no torch, so
:mod:`rl_vlm.config` can hold a :class:`CareConfig` without importing the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rl_vlm.errors import require


@dataclass(frozen=True)
class CareConfig:
    """GRPO-CARE, algorithms.md §4 (defaults: ``run_grpo_care_margin0*`` scripts, §4.3)."""

    ema_decay: float = 0.995
    """φ ← decay·φ + (1 − decay)·θ (``ref_ema_decay``); in [0, 1)."""
    ema_update_every: int = 10
    """The EMA reference is updated after every N-th optimizer step (``ref_ema_update_every``)."""
    bonus_coef: float = 0.5
    """λ of the consistency bonus λ·acc·1[i ∈ H ∩ C] (scripts 0.5; dataclass default 1.0)."""
    confidence_upper_bound: float | None = 0.95
    """c_i ← min(c_i, bound) BEFORE c̄ is taken (§4.1 step 3); None = no clamp (the authors'
    dataclass default; every script sets 0.95)."""
    margin: float = 0.0
    """c_i ≥ c̄ − margin counts as consistent (0 = the code's None; 0.01 for video benchmarks)."""
    accuracy_threshold: float = 0.1
    """The high-accuracy set needs acc > this (and ≥ the mean accuracy of its unit)."""
    accuracy_key: str = "accuracy"
    """The reward sub-score used as acc_i (the code's reward function index 0)."""
    group_scope: Literal["group", "device"] = "group"
    """``group``: H, c̄ and C per prompt group (principled); ``device``: over each rank's share of
    each mini-batch (the driver's ``device_mini_batches``), as the code does with its per-GPU
    batch. The two are equal at one prompt per device (§4.4, §9.10)."""

    def __post_init__(self) -> None:
        key = "algorithm.care."
        require(0.0 <= self.ema_decay < 1.0, key + "ema_decay", "must be in [0, 1)", self.ema_decay)
        require(self.ema_update_every >= 1, key + "ema_update_every", "must be >= 1", self.ema_update_every)
        require(self.bonus_coef >= 0, key + "bonus_coef", "must be >= 0", self.bonus_coef)
        bound = self.confidence_upper_bound
        require(bound is None or 0.0 < bound <= 1.0, key + "confidence_upper_bound", "must be in (0, 1] or null",
                bound)
        require(self.margin >= 0, key + "margin", "must be >= 0", self.margin)
        require(self.group_scope in ("group", "device"), key + "group_scope", "must be 'group' or 'device'",
                self.group_scope)


__all__ = ["CareConfig"]
