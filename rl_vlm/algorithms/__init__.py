"""RL algorithms: an explicit registry of :class:`Algorithm` classes (base = plain GRPO).

Importing this package needs torch only (no Ray, vLLM or DeepSpeed), so the math is tested in
milliseconds. A variant is one module with one subclass, added to :data:`ALGORITHMS` by name.
"""

from __future__ import annotations

from rl_vlm.algorithms.base import Algorithm, LossInputs, LossOutput, LossTerm, RolloutScores, ViewSpec
from rl_vlm.config import AlgorithmConfig

ALGORITHMS: dict[str, type[Algorithm]] = {
    "grpo": Algorithm,
}
"""``algorithm.name`` -> class. Each class is constructed from the AlgorithmConfig alone."""


def build_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name``; unknown names list the valid ones."""
    try:
        cls = ALGORITHMS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown algorithm.name {cfg.name!r}; valid names: {sorted(ALGORITHMS)}") from None
    return cls(cfg)


__all__ = ["ALGORITHMS", "Algorithm", "LossInputs", "LossOutput", "LossTerm", "RolloutScores", "ViewSpec",
           "build_algorithm"]
