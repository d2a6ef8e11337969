"""RL algorithms: an explicit registry of :class:`Algorithm` classes (base = plain GRPO).

Layout: ``base.py`` (the hook contract, and GRPO itself), ``context.py`` (the typed per-step
inputs of the hooks), ``core.py`` (the shared tensor math), one module per variant (``papo.py``,
``vppo.py``, ``care.py``, ``vogue.py``) with its knobs beside it (``<variant>_config.py``),
``views.py`` (image transforms) and ``registry.py`` (``algorithm.name`` -> class, compositions).
Variants compose (``algorithm.name=papo+vppo``) where :data:`COMPATIBLE` allows it.

May import torch, numpy and :mod:`rl_vlm.config`; never Ray, vLLM or DeepSpeed, so the math is
tested in milliseconds. Importing this package itself imports nothing: the names below load
their module on first use, so that :mod:`rl_vlm.config` can hold the variants' config dataclasses
(torch-free modules) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_vlm.algorithms.base import (
        Algorithm,
        EmaSpec,
        LossInputs,
        LossOutput,
        LossTerm,
        RolloutScores,
        ViewSpec,
    )
    from rl_vlm.algorithms.context import StepContext, ViewOutputs
    from rl_vlm.algorithms.registry import (
        ALGORITHMS,
        COMPATIBLE,
        algorithm_class,
        build_algorithm,
        check_config,
        parse_name,
    )

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Algorithm", "EmaSpec", "LossInputs", "LossOutput", "LossTerm", "RolloutScores", "ViewSpec"],
                    "base"),
    **dict.fromkeys(["StepContext", "ViewOutputs"], "context"),
    **dict.fromkeys(["ALGORITHMS", "COMPATIBLE", "algorithm_class", "build_algorithm", "check_config", "parse_name"],
                    "registry"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = ["ALGORITHMS", "COMPATIBLE", "Algorithm", "EmaSpec", "LossInputs", "LossOutput", "LossTerm",
           "RolloutScores", "StepContext", "ViewOutputs", "ViewSpec", "algorithm_class", "build_algorithm",
           "check_config", "parse_name"]
