"""Scores a batch of responses with the configured reward functions (algorithms.md §7).

overall_i = Σ_k weight_k · score_k(response_i, row_i); every function's score and extra
sub-scores are kept for logging. A function that raises (or returns something that is not a
finite score) gives that sample 0 for that function and counts an error; the step continues.

Execution is serial and in-process for now. The work is organised as independent
(function, sample) calls (:meth:`RewardManager._call`) whose results are assembled afterwards,
so a later version can farm them out to a process pool with per-call timeouts without changing
:meth:`RewardManager.score` or :class:`RewardResult`.
"""

from __future__ import annotations

import inspect
import logging
import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rl_vlm.config import RewardConfig
from rl_vlm.rewards import RewardFn, resolve_reward

logger = logging.getLogger("rl_vlm.rewards")


@dataclass
class RewardResult:
    """Rewards of N responses, in the order they were given."""

    overall: torch.Tensor
    """[N] float32, Σ_k weight_k · score_k."""
    sub_scores: dict[str, torch.Tensor]
    """[N] float32 each: ``<name>`` = function k's score (unweighted) under its configured name,
    and ``<name>/<key>`` for every extra key of a dict-returning function (0 where a sample did
    not return that key or raised)."""
    num_errors: int
    """How many (function, sample) calls raised or returned an invalid score."""


class RewardManager:
    """Resolves the configured reward functions once and scores batches with them."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.names: tuple[str, ...] = tuple(f.name for f in cfg.functions)
        dupes = sorted({n for n in self.names if self.names.count(n) > 1})
        if dupes:
            raise ValueError(f"reward.functions: {dupes} configured more than once; sub-scores are keyed "
                             "by name, so wrap the function under a second name to use it twice")
        self.fns: tuple[RewardFn, ...] = tuple(resolve_reward(f.name) for f in cfg.functions)
        for fcfg, fn in zip(cfg.functions, self.fns):
            _check_kwargs(fcfg.name, fn, fcfg.kwargs)
        self._logged: set[str] = set()

    def _call(self, k: int, response: str, row: Mapping[str, Any]) -> dict[str, float] | str:
        """Function k on one sample: ``{"score": s, ...extra keys}``, or the traceback text
        when it raised or returned an invalid value (a string, so it can cross processes)."""
        fcfg = self.cfg.functions[k]
        try:
            out = self.fns[k](response, dict(row), **fcfg.kwargs)
            return _as_scores(out)
        except Exception:  # a user reward must never crash the run
            return traceback.format_exc()

    def score(self, responses: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> RewardResult:
        """Score ``responses[i]`` against ``rows[i]`` with every configured function.

        Args:
            responses: [N] decoded response texts.
            rows: [N] the dataset row of each response's prompt (repeated for the G samples).

        Returns:
            :class:`RewardResult` with ``overall`` and ``sub_scores`` as [N] float32 tensors.
        """
        if len(responses) != len(rows):
            raise ValueError(f"{len(responses)} responses but {len(rows)} rows")
        n = len(responses)
        overall = torch.zeros(n, dtype=torch.float64)
        sub: dict[str, torch.Tensor] = {}
        errors = 0
        for k, (fcfg, name) in enumerate(zip(self.cfg.functions, self.names)):
            results = [self._call(k, responses[i], rows[i]) for i in range(n)]
            scores = torch.zeros(n, dtype=torch.float64)
            extra: dict[str, torch.Tensor] = {}
            for i, res in enumerate(results):
                if isinstance(res, str):
                    errors += 1
                    self._log_first(name, i, res)
                    continue
                scores[i] = res["score"]
                for key, value in res.items():
                    if key != "score":
                        extra.setdefault(f"{name}/{key}", torch.zeros(n, dtype=torch.float64))[i] = value
            overall += fcfg.weight * scores
            sub[name] = scores.float()
            sub.update({key: v.float() for key, v in extra.items()})
        return RewardResult(overall=overall.float(), sub_scores=sub, num_errors=errors)

    def _log_first(self, name: str, index: int, tb: str) -> None:
        # One traceback per function per manager: enough to debug, without flooding the log
        # when a function fails on every sample of every step.
        if name in self._logged:
            return
        self._logged.add(name)
        logger.error("reward function %r failed on sample %d (scored 0; later failures of this function "
                     "are only counted):\n%s", name, index, tb)


def _as_scores(out: Any) -> dict[str, float]:
    """Validate one function output: a finite number, or a dict of finite numbers with "score"."""
    if isinstance(out, Mapping):
        if "score" not in out:
            raise ValueError(f"a reward dict must contain 'score'; got keys {sorted(out)}")
        scores = {str(k): _finite(v, str(k)) for k, v in out.items()}
    else:
        scores = {"score": _finite(out, "score")}
    return scores


def _finite(value: Any, key: str) -> float:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if not isinstance(value, (int, float)):
        raise TypeError(f"reward {key!r} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"reward {key!r} is not finite: {number}")
    return number


def _check_kwargs(name: str, fn: RewardFn, kwargs: Mapping[str, Any]) -> None:
    """Fail at start-up, not as an error on every sample, when the configured kwargs do not fit."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins/C callables have no signature
        return
    try:
        sig.bind("", {}, **kwargs)
    except TypeError as e:
        raise ValueError(f"reward function {name!r} cannot be called as fn(response, row, "
                         f"**{dict(kwargs)!r}): {e}") from e
