"""VPPO's knobs, ``algorithm.vppo.*`` (algorithms.md §3): definition, defaults, validation.

The hooks that read them are in :mod:`rl_vlm.algorithms.vppo`. This module imports no torch, so
:mod:`rl_vlm.config` can hold a :class:`VppoConfig` without importing the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rl_vlm.errors import require


@dataclass(frozen=True)
class VppoConfig:
    """VPPO, algorithms.md §3 (defaults: ``train_vppo_7b.sh``, §3.4)."""

    mask_prob: float = 0.5
    """Tile blackening probability, a new mask per response, after resizing (§3.2)."""
    patch_size: int = 14
    dependency: Literal["sampled_k3", "full_kl"] = "sampled_k3"
    """Token visual dependency: the code's k3 on the sampled token (clamped to [0, 10]) or the
    paper's full-distribution KL(P ‖ P')."""
    advantage_shaping: bool = True
    """Trajectory-level advantage shaping (TAS, mean-preserving)."""
    beta_min: float = 0.9
    token_filtering: bool = True
    """Token-level gradient filtering (TGF): only the top ``top_p_tokens`` of each response's
    tokens by dependency get policy gradient; the denominator keeps all valid tokens."""
    top_p_tokens: float = 0.4
    entropy_penalty: float = 0.06
    """c_H of the entropy penalty +c_H·mean(−ℓ) (0 = off)."""
    stats_scope: Literal["micro_batch", "global"] = "micro_batch"
    """``micro_batch``: the code's statistics (min/max over each rank's mini-batch, the mean over
    each micro-batch), so results depend on learner.micro_batch_size and num_ranks; ``global``:
    min/max and mean over all the step's valid sequences, independent of the partition."""

    def __post_init__(self) -> None:
        key = "algorithm.vppo."
        require(0 <= self.mask_prob <= 1, key + "mask_prob", "must be in [0, 1]", self.mask_prob)
        require(self.patch_size >= 1, key + "patch_size", "must be >= 1", self.patch_size)
        require(self.dependency in ("sampled_k3", "full_kl"), key + "dependency",
                "must be 'sampled_k3' or 'full_kl'", self.dependency)
        # β_min > 1 would still preserve the mean but give LESS weight to image-dependent responses.
        require(0 <= self.beta_min <= 1, key + "beta_min", "must be in [0, 1]", self.beta_min)
        require(0 < self.top_p_tokens <= 1, key + "top_p_tokens", "must be in (0, 1]", self.top_p_tokens)
        require(self.entropy_penalty >= 0, key + "entropy_penalty", "must be >= 0", self.entropy_penalty)
        require(self.stats_scope in ("micro_batch", "global"), key + "stats_scope",
                "must be 'micro_batch' or 'global'", self.stats_scope)


__all__ = ["VppoConfig"]
