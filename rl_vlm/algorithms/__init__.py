"""RL algorithms: an explicit registry of :class:`Algorithm` classes (base = plain GRPO).

Importing this package needs torch only (no Ray, vLLM or DeepSpeed), so the math is tested in
milliseconds. A variant is one module with one subclass, added to :data:`ALGORITHMS` by name.
Variants compose (``algorithm.name=papo+vppo``) where :data:`COMPATIBLE` allows it.
"""

from __future__ import annotations

from rl_vlm.algorithms.base import (
    Algorithm,
    EmaSpec,
    LossInputs,
    LossOutput,
    LossTerm,
    RolloutScores,
    ViewSpec,
)
from rl_vlm.config import AlgorithmConfig

ALGORITHMS: dict[str, type[Algorithm]] = {
    "grpo": Algorithm,
}
"""``algorithm.name`` -> class. Each class is constructed from the AlgorithmConfig alone."""

COMPATIBLE: dict[frozenset[str], str] = {
    frozenset({"papo", "vppo"}): "VPPO reshapes advantages and filters PG tokens; PAPO adds loss terms",
    frozenset({"papo", "care"}): "CARE changes rewards only; PAPO adds loss terms",
    frozenset({"vppo", "care"}): "CARE changes rewards only; VPPO acts on advantages and PG tokens",
    frozenset({"papo", "vogue"}): "VOGUE shapes advantages; PAPO adds loss terms (code mode only)",
    frozenset({"care", "vogue"}): "CARE changes rewards; VOGUE shapes the advantages computed from them",
}
"""Pairs of variants that may be composed, with the reason the math allows it. Pairs not
listed are rejected at config time (VPPO + VOGUE: both rescale the same advantages with
statistics of different image views, so the result would depend on an arbitrary order)."""

_VARIANTS = {"papo": ("rl_vlm.algorithms.papo", "Papo"), "vppo": ("rl_vlm.algorithms.vppo", "Vppo"),
             "care": ("rl_vlm.algorithms.care", "Care"), "vogue": ("rl_vlm.algorithms.vogue", "Vogue")}


def _register_variants() -> None:
    # Imported lazily (not at module top) because each variant module imports this package.
    import importlib

    for name, (module, cls) in _VARIANTS.items():
        if name not in ALGORITHMS:
            ALGORITHMS[name] = getattr(importlib.import_module(module), cls)


def parse_name(name: str) -> list[str]:
    """``"papo+vppo"`` -> ``["papo", "vppo"]`` (``grpo`` is the base and may be omitted)."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    variants = [p for p in parts if p != "grpo"]
    return variants or ["grpo"]


def algorithm_class(name: str) -> type[Algorithm]:
    """The class for ``algorithm.name``: a registered name or a valid ``+`` composition."""
    _register_variants()
    parts = parse_name(name)
    unknown = [p for p in parts if p not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithm.name {unknown[0]!r} in {name!r}; valid names: {sorted(ALGORITHMS)} "
                         "(compose variants with '+', e.g. papo+vppo)")
    if len(set(parts)) != len(parts):
        raise ValueError(f"algorithm.name {name!r} lists a variant twice")
    if len(parts) == 1:
        return ALGORITHMS[parts[0]]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            if frozenset((a, b)) not in COMPATIBLE:
                allowed = sorted("+".join(sorted(p)) for p in COMPATIBLE)
                raise ValueError(f"algorithm.name {name!r}: {a} and {b} cannot be composed; "
                                 f"valid combinations: {allowed} (see README 'Composing algorithms')")
    # Cooperative multiple inheritance: each variant's hooks call super(), so the MRO chains them.
    return type("+".join(parts), tuple(ALGORITHMS[p] for p in parts), {})


def build_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name``; unknown names list the valid ones."""
    cls = algorithm_class(cfg.name)
    parts = parse_name(cfg.name)
    if "vogue" in parts and len(parts) > 1 and cfg.vogue.mode == "paper":
        # Its extra noisy-branch rollouts and per-sample selection change the batch that the
        # other variants' statistics (groups, masks, EMA scores) assume.
        raise ValueError(f"algorithm.name={cfg.name!r}: VOGUE's paper mode (algorithm.vogue.mode=paper) "
                         "cannot be composed; use algorithm.vogue.mode=code")
    return cls(cfg)


__all__ = ["ALGORITHMS", "COMPATIBLE", "Algorithm", "EmaSpec", "LossInputs", "LossOutput", "LossTerm",
           "RolloutScores", "ViewSpec", "algorithm_class", "build_algorithm", "parse_name"]
