"""The explicit registry ``algorithm.name`` -> :class:`~rl_vlm.algorithms.base.Algorithm` class,
the allowed compositions, and the two entry points: :func:`check_config` (no instance, for
:func:`rl_vlm.validation.validate`) and :func:`build_algorithm` (once per process: the driver's
controller and each learner rank)."""

from __future__ import annotations

from rl_vlm.algorithms.base import Algorithm
from rl_vlm.algorithms.care import Care
from rl_vlm.algorithms.papo import Papo
from rl_vlm.algorithms.vogue import Vogue
from rl_vlm.algorithms.vppo import Vppo
from rl_vlm.config import AlgorithmConfig
from rl_vlm.errors import ConfigError

ALGORITHMS: dict[str, type[Algorithm]] = {
    "grpo": Algorithm,
    "papo": Papo,
    "vppo": Vppo,
    "care": Care,
    "vogue": Vogue,
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


def parse_name(name: str) -> list[str]:
    """``"papo+vppo"`` -> ``["papo", "vppo"]`` (``grpo`` is the base and may be omitted)."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    variants = [p for p in parts if p != "grpo"]
    return variants or ["grpo"]


def algorithm_class(name: str) -> type[Algorithm]:
    """The class for ``algorithm.name``: a registered name or a valid ``+`` composition."""
    parts = parse_name(name)
    unknown = [p for p in parts if p not in ALGORITHMS]
    if unknown:
        raise ConfigError(f"unknown algorithm.name {unknown[0]!r} in {name!r}; valid names: {sorted(ALGORITHMS)} "
                          "(compose variants with '+', e.g. papo+vppo)")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"algorithm.name {name!r} lists a variant twice")
    if len(parts) == 1:
        return ALGORITHMS[parts[0]]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            if frozenset((a, b)) not in COMPATIBLE:
                allowed = sorted("+".join(sorted(p)) for p in COMPATIBLE)
                raise ConfigError(f"algorithm.name {name!r}: {a} and {b} cannot be composed; "
                                  f"valid combinations: {allowed} (see README 'Composing algorithms')")
    # Cooperative multiple inheritance: each variant's hooks call super(), so the MRO chains them.
    return type("+".join(parts), tuple(ALGORITHMS[p] for p in parts), {})


def _composed_class(cfg: AlgorithmConfig) -> type[Algorithm]:
    cls = algorithm_class(cfg.name)
    parts = parse_name(cfg.name)
    if "vogue" in parts and len(parts) > 1 and cfg.vogue.mode == "paper":
        # Its extra noisy-branch rollouts and per-sample selection change the batch that the
        # other variants' statistics (groups, masks, EMA scores) assume.
        raise ConfigError(f"algorithm.name={cfg.name!r}: VOGUE's paper mode (algorithm.vogue.mode=paper) "
                          "cannot be composed; use algorithm.vogue.mode=code")
    return cls


def check_config(cfg: AlgorithmConfig) -> type[Algorithm]:
    """Every check of ``cfg`` that needs no instance, raising :class:`ConfigError` naming the key:
    the name, the composition and the class's :meth:`~Algorithm.check_config` (the variant
    sub-configs checked themselves when they were built). Returns the class."""
    cls = _composed_class(cfg)
    cls.check_config(cfg)
    return cls


def build_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name`` (its ``__init__`` runs the class's
    :meth:`~Algorithm.check_config`); unknown names list the valid ones."""
    return _composed_class(cfg)(cfg)


__all__ = ["ALGORITHMS", "COMPATIBLE", "algorithm_class", "build_algorithm", "check_config", "parse_name"]
