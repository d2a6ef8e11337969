"""Scores a batch of responses with the configured reward functions (algorithms.md §7).

Each sample is scored by one function set: a row with a ``reward`` field uses
``reward.by_task[row["reward"]]`` (an unknown name scores 0 and counts an error under
``routing``); else a row whose ``task`` is a key of ``reward.by_task`` uses that set; else
``reward.functions``. Then overall_i = Σ_k weight_k · score_k(response_i, row_i) over the sample's
set, and every function's score and extra sub-scores are kept for logging under its ``key``.

A function that raises, returns something that is not a finite score, or (with workers) runs
past ``reward.timeout_s`` gives that sample 0 for that function and counts an error; the first
traceback of each key is logged once; the step continues. ``reward.num_workers = 0`` scores
serially in the driver (no timeout); otherwise a :class:`~rl_vlm.rewards.pool.RewardPool` of
worker processes is started on the first batch and reused.

Circuit breaker: after ``reward.max_consecutive_errors`` failures in a row of one configured
function (a success resets the count), ``reward.on_repeated_errors=disable`` disables it for the
manager's life: it is not called (nor sent to the workers) again and scores 0 without counting
errors; ``RewardResult.num_disabled`` counts such functions. ``stop`` raises RuntimeError instead.
One manager per curriculum stage, so a stage starts with every function enabled.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rl_vlm.config import RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import RewardFn, resolve_reward
from rl_vlm.rewards.pool import (
    CircuitBreaker,
    FunctionSpec,
    RewardPool,
    accepts_length,
    call_reward,
)

logger = logging.getLogger("rl_vlm.rewards")

ROUTING = "routing"
"""Error key of samples whose ``reward`` field names no set of ``reward.by_task``."""


@dataclass
class RewardResult:
    """Rewards of N responses, in the order they were given."""

    overall: torch.Tensor
    """[N] float32, Σ_k weight_k · score_k over the sample's function set."""
    sub_scores: dict[str, torch.Tensor]
    """[N] float32 each: ``<key>`` = function k's score (unweighted) under its configured key
    (default its name), and ``<key>/<extra>`` for every extra key of a dict-returning function
    (0 where a sample did not return that key, raised, or was not scored by that function)."""
    num_errors: int
    """How many (function, sample) calls raised, timed out or returned an invalid score, plus
    samples that could not be routed to a function set."""
    errors: dict[str, int] = field(default_factory=dict)
    """num_errors by sub-score key (``routing`` for unroutable samples); only keys with errors."""
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    """[N] bool for each key of ``sub_scores``: which samples it was computed for (with ``by_task``
    a key may apply to some samples only; its mean over those is ``s[m].mean()``)."""
    num_disabled: int = 0
    """Functions the manager has disabled so far (``reward.on_repeated_errors=disable``), this
    batch or earlier; their samples score 0 and are not counted in ``errors``."""


@dataclass(frozen=True)
class _Slot:
    """One configured function in one set."""

    cfg: RewardFunctionConfig
    fn: RewardFn
    key: str
    pass_length: bool
    label: str
    """How breaker messages name it: ``'name'``, plus its key and ``by_task`` set when they differ."""


class RewardManager:
    """Resolves the configured reward functions once and scores batches with them."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.slots: list[_Slot] = []
        self.sets: dict[str | None, tuple[int, ...]] = {}
        """Slot indices by set: ``None`` = ``reward.functions``, else the ``by_task`` name."""
        for set_name, fcfgs in [(None, cfg.functions), *cfg.by_task.items()]:
            where = "reward.functions" if set_name is None else f"reward.by_task.{set_name}"
            keys = [f.key or f.name for f in fcfgs]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"{where}: {dupes} configured more than once; sub-scores are keyed by "
                                 "name, so give the second one its own `key`")
            if not fcfgs:
                raise ValueError(f"{where}: at least one reward function is required")
            start = len(self.slots)
            for fcfg, key in zip(fcfgs, keys, strict=True):
                fn = resolve_reward(fcfg.name)
                _check_kwargs(fcfg.name, fn, fcfg.kwargs)
                label = repr(fcfg.name) + (f" (key {key!r})" if key != fcfg.name else "")
                label += f" in {where}" if set_name is not None else ""
                self.slots.append(_Slot(fcfg, fn, key, accepts_length(fn), label))
            self.sets[set_name] = tuple(range(start, len(self.slots)))
        self.names: tuple[str, ...] = tuple(self.slots[k].key for k in self.sets[None])
        self._logged: set[str] = set()
        self._pool: RewardPool | None = None
        self.breaker = CircuitBreaker([s.label for s in self.slots], cfg.max_consecutive_errors,
                                      cfg.on_repeated_errors)
        """Consecutive failures per slot and the disabled slots (see the module docstring)."""

    @property
    def num_disabled(self) -> int:
        """How many configured functions the circuit breaker has disabled so far."""
        return len(self.breaker.disabled)

    # ------------------------------------------------------------------------------ routing
    def set_of(self, row: Mapping[str, Any]) -> str | None:
        """The ``by_task`` set that scores ``row`` (None = ``reward.functions``); KeyError when its
        ``reward`` field names no set (see the module docstring for the rule)."""
        name = row.get("reward")
        if name is not None and name != "":
            if str(name) not in self.cfg.by_task:
                raise KeyError(f"row field reward={name!r} names no set of reward.by_task "
                               f"(sets: {sorted(self.cfg.by_task)})")
            return str(name)
        task = row.get("task")
        return str(task) if task is not None and str(task) in self.cfg.by_task else None

    def check_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Raise ValueError naming the first row whose ``reward`` field names no set (for a
        start-up check of a dataset; during training such rows score 0 and count errors)."""
        for index, row in enumerate(rows):
            try:
                self.set_of(row)
            except KeyError as e:
                raise ValueError(f"row {index}: {e.args[0]}") from None

    # ------------------------------------------------------------------------------ scoring
    def score(self, responses: Sequence[str], rows: Sequence[Mapping[str, Any]],
              response_lengths: Sequence[int] | None = None) -> RewardResult:
        """Score ``responses[i]`` against ``rows[i]`` with the function set of row i.

        Args:
            responses: [N] decoded response texts.
            rows: [N] the dataset row of each response's prompt (repeated for the G samples).
            response_lengths: [N] response lengths in tokens, optional; passed as
                ``response_length=`` to functions that declare that parameter (``overlong``).

        Returns:
            :class:`RewardResult` with ``overall`` and ``sub_scores`` as [N] float32 tensors.
        """
        n = len(responses)
        if len(rows) != n:
            raise ValueError(f"{n} responses but {len(rows)} rows")
        if response_lengths is not None and len(response_lengths) != n:
            raise ValueError(f"{n} responses but {len(response_lengths)} response_lengths")
        lengths = [None if response_lengths is None else int(response_lengths[i]) for i in range(n)]
        errors: dict[str, int] = {}
        plan: list[tuple[int, ...]] = []
        for i, row in enumerate(rows):
            try:
                plan.append(self.sets[self.set_of(row)])
            except KeyError as e:
                plan.append(())
                self._error(ROUTING, i, f"KeyError: {e.args[0]}", errors)

        results = self._run(responses, rows, plan, lengths)

        overall = torch.zeros(n, dtype=torch.float64)
        sub: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        for k in self.sets[None]:  # the default keys are always reported (stable metric names)
            sub.setdefault(self.slots[k].key, torch.zeros(n, dtype=torch.float64))
            present.setdefault(self.slots[k].key, torch.zeros(n, dtype=torch.bool))
        for i, ks in enumerate(plan):
            for k in ks:
                slot = self.slots[k]
                scores = sub.setdefault(slot.key, torch.zeros(n, dtype=torch.float64))
                present.setdefault(slot.key, torch.zeros(n, dtype=torch.bool))[i] = True
                res = results.get((i, k))
                if res is None:  # disabled by the circuit breaker: scores 0, already reported once
                    continue
                if isinstance(res, str):
                    self._error(slot.key, i, res, errors, slot.cfg.name)
                    continue
                scores[i] = res["score"]
                overall[i] += slot.cfg.weight * res["score"]
                for extra, value in res.items():
                    if extra != "score":
                        sub.setdefault(f"{slot.key}/{extra}", torch.zeros(n, dtype=torch.float64))[i] = value
                        present.setdefault(f"{slot.key}/{extra}", torch.zeros(n, dtype=torch.bool))[i] = True
        return RewardResult(overall=overall.float(), sub_scores={k: v.float() for k, v in sub.items()},
                            num_errors=sum(errors.values()), errors=errors, present=present,
                            num_disabled=self.num_disabled)

    def _run(self, responses: Sequence[str], rows: Sequence[Mapping[str, Any]], plan: list[tuple[int, ...]],
             lengths: list[int | None]) -> dict[tuple[int, int], dict[str, float] | str]:
        if self.cfg.num_workers == 0:
            out: dict[tuple[int, int], dict[str, float] | str] = {}
            for i, ks in enumerate(plan):
                for k in ks:
                    if self.breaker.is_disabled(k):
                        continue
                    slot = self.slots[k]
                    out[(i, k)] = call_reward(slot.fn, responses[i], rows[i], slot.cfg.kwargs, lengths[i],
                                              slot.pass_length)
                    self.breaker.record(k, out[(i, k)])
            return out
        if self._pool is None:
            specs = [FunctionSpec(_absolute(s.cfg.name), getattr(s.fn, "__module__", "") or "", dict(s.cfg.kwargs))
                     for s in self.slots]
            self._pool = RewardPool(specs, self.cfg.num_workers, self.cfg.timeout_s)
            weakref.finalize(self, self._pool.close)
        return self._pool.run([(i, responses[i], rows[i], ks, lengths[i]) for i, ks in enumerate(plan)],
                              self.breaker)

    def close(self) -> None:
        """Stop the reward workers, if any (also done at garbage collection and interpreter exit)."""
        if self._pool is not None:
            self._pool.close()

    def _error(self, key: str, index: int, tb: str, errors: dict[str, int], name: str | None = None) -> None:
        errors[key] = errors.get(key, 0) + 1
        # One traceback per key per manager: enough to debug, without flooding the log when a
        # function fails on every sample of every step.
        if key in self._logged:
            return
        self._logged.add(key)
        what = f"reward function {name!r}" if name is not None else "reward routing"
        if name is not None and name != key:
            what += f" (key {key!r})"
        logger.error("%s failed on sample %d (scored 0; later failures are only counted):\n%s", what, index, tb)


def _absolute(name: str) -> str:
    """A ``file.py:fn`` spec with an absolute path: workers may not share the driver's directory."""
    where, sep, attr = name.rpartition(":")
    if sep and (where.endswith(".py") or "/" in where or os.sep in where):
        return f"{os.path.abspath(os.path.expanduser(where))}:{attr}"
    return name


def _check_kwargs(name: str, fn: RewardFn, kwargs: Mapping[str, Any]) -> None:
    """Fail at start-up, not as an error on every sample, when the configured kwargs do not fit."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins/C callables have no signature
        return
    if "response_length" in kwargs:
        raise ValueError(f"reward function {name!r}: response_length is filled in by the manager, not kwargs")
    try:
        sig.bind("", {}, **kwargs)
    except TypeError as e:
        raise ValueError(f"reward function {name!r} cannot be called as fn(response, row, "
                         f"**{dict(kwargs)!r}): {e}") from e
