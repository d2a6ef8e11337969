"""Calling reward functions safely: one call's validation, and a process pool with per-call timeouts.

No torch here: worker processes import only this module, the registry and the reward functions.

The pool keeps ``num_workers`` processes (forkserver, else spawn), started lazily on the first
batch and reused. A task is one sample with the indices of the functions to run on it; a worker
sends one message per finished function, and each function call has ``timeout_s`` from the moment
the previous one finished (or the task was sent). A call past its deadline is abandoned: its
worker is killed and replaced, the call is reported as a timeout, and the sample's remaining
functions go back to the queue. A worker that dies (segfault, ``os._exit``) is handled the same way.

A :class:`CircuitBreaker` sees every result as it arrives; functions it has disabled are no longer
sent to the workers (calls already running finish or time out as usual).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import multiprocessing as mp
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

_STARTUP_TIMEOUT_S = 120.0

logger = logging.getLogger("rl_vlm.rewards")


def accepts_length(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` declares a ``response_length`` parameter (it then gets the token count)."""
    try:
        return "response_length" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def call_reward(fn: Callable[..., Any], response: str, row: Mapping[str, Any], kwargs: Mapping[str, Any],
                response_length: int | None, pass_length: bool) -> dict[str, float] | str:
    """``fn(response, row_copy, **kwargs)`` validated to ``{"score": s, ...}``; the traceback text
    (a string, so it can cross processes) when it raised or returned an invalid value."""
    try:
        extra = {"response_length": response_length} if pass_length else {}
        return _as_scores(fn(response, dict(row), **kwargs, **extra))
    except Exception:  # a user reward must never crash the run
        return traceback.format_exc()


def _as_scores(out: Any) -> dict[str, float]:
    """Validate one function output: a finite number, or a dict of finite numbers with "score"."""
    if isinstance(out, Mapping):
        if "score" not in out:
            raise ValueError(f"a reward dict must contain 'score'; got keys {sorted(out)}")
        return {str(k): _finite(v, str(k)) for k, v in out.items()}
    return {"score": _finite(out, "score")}


def _finite(value: Any, key: str) -> float:
    if hasattr(value, "item") and callable(value.item):  # 0-d torch/numpy values
        value = value.item()
    if not isinstance(value, (int, float)):  # bools are ints: True scores 1
        raise TypeError(f"reward {key!r} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"reward {key!r} is not finite: {number}")
    return number


class CircuitBreaker:
    """Consecutive failures per function index (``reward.max_consecutive_errors``).

    A failure is any error result (the traceback text of a raise, an invalid or non-finite
    score, a timeout or a dead worker); a success resets that function's count. At ``limit``
    failures in a row, ``mode`` ``disable`` disables the function (one WARNING) and ``stop``
    raises RuntimeError; ``limit`` 0 never trips.
    """

    def __init__(self, labels: Sequence[str], limit: int, mode: str) -> None:
        self.labels = list(labels)
        """How messages name function k (its name, key and set)."""
        self.limit = limit
        self.mode = mode
        self.failures = [0] * len(self.labels)
        self.disabled: dict[int, str] = {}
        """Disabled function indices -> their last error (one line)."""

    def is_disabled(self, k: int) -> bool:
        return k in self.disabled

    def record(self, k: int, result: dict[str, float] | str) -> None:
        if not isinstance(result, str):
            self.failures[k] = 0
            return
        self.failures[k] += 1
        if self.limit == 0 or self.failures[k] < self.limit or k in self.disabled:
            return
        last = _last_line(result)
        if self.mode == "stop":
            # The manager logs tracebacks after the batch, which this raise skips: keep the evidence.
            logger.error("reward function %s: last failure before stopping the run:\n%s", self.labels[k], result)
            raise RuntimeError(f"reward function {self.labels[k]} failed {self.failures[k]} times in a row "
                               f"(reward.max_consecutive_errors={self.limit}, reward.on_repeated_errors=stop); "
                               f"last error: {last}")
        self.disabled[k] = last
        logger.warning("reward function %s disabled after %d consecutive failures "
                       "(reward.max_consecutive_errors=%d): it scores 0 from now on and is not called again; "
                       "last error: %s", self.labels[k], self.failures[k], self.limit, last)


def _last_line(tb: str) -> str:
    """The ``Type: message`` line of a traceback text (the whole text when it is one line)."""
    lines = [line.strip() for line in tb.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


@dataclass(frozen=True)
class FunctionSpec:
    """How a worker finds function k: ``resolve_reward(name)``, after importing ``module`` if the
    name was registered at run time by user code that the worker has not imported."""

    name: str
    module: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _load(spec: FunctionSpec) -> Callable[..., Any]:
    from rl_vlm.rewards import resolve_reward

    try:
        return resolve_reward(spec.name)
    except ValueError:
        importlib.import_module(spec.module)
        return resolve_reward(spec.name)


def _worker_main(conn: Connection, specs: Sequence[FunctionSpec]) -> None:
    try:
        fns = [_load(s) for s in specs]
        pass_length = [accepts_length(f) for f in fns]
    except BaseException:
        conn.send(("init_error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver went away
            return
        if task is None:
            return
        i, response, row, ks, length = task
        for k in ks:
            conn.send((i, k, call_reward(fns[k], response, row, specs[k].kwargs, length, pass_length[k])))


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    task: tuple[Any, ...] | None = None
    remaining: list[int] = field(default_factory=list)
    deadline: float = 0.0


class RewardPool:
    """``num_workers`` reward processes with per-call timeouts (see the module docstring)."""

    def __init__(self, specs: Sequence[FunctionSpec], num_workers: int, timeout_s: float) -> None:
        self.specs = list(specs)
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context("forkserver") if "forkserver" in methods else mp.get_context("spawn")
        if self._ctx.get_start_method() == "forkserver":
            # New workers (replacements after a timeout too) fork from a server that has already
            # imported the rewards and math_verify, so they start in milliseconds.
            self._ctx.set_forkserver_preload(["rl_vlm.rewards.pool", "rl_vlm.rewards", "math_verify"])
        self._workers: list[_Worker] = []
        self.num_restarts = 0
        """Workers killed (timeouts) or found dead and replaced, over the pool's life."""

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.specs), name="rl_vlm-reward")
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _await_ready(self, w: _Worker) -> None:
        if not w.conn.poll(_STARTUP_TIMEOUT_S):
            self._kill(w)
            raise RuntimeError(f"a reward worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
        kind, payload = w.conn.recv()
        if kind != "ready":
            self._kill(w)
            raise RuntimeError(f"a reward worker could not load the reward functions:\n{payload}")

    def _start(self) -> None:
        if self._workers:
            return
        workers = [self._spawn() for _ in range(self.num_workers)]
        for w in workers:  # started together, awaited one by one
            self._await_ready(w)
        self._workers = workers

    @staticmethod
    def _kill(w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        w.conn.close()

    def _replace(self, index: int) -> None:
        self._kill(self._workers[index])
        self.num_restarts += 1
        w = self._spawn()
        self._await_ready(w)
        self._workers[index] = w

    def run(self, tasks: Sequence[tuple[int, str, Mapping[str, Any], Sequence[int], int | None]],
            breaker: CircuitBreaker | None = None) -> dict[tuple[int, int], dict[str, float] | str]:
        """Run every ``(i, response, row, function indices, response_length)`` task; returns
        ``{(i, k): result}`` for every requested pair (timeouts as error text) except those of
        functions ``breaker`` has disabled before they were sent. When the breaker raises
        (``stop``), the workers are killed first, so a later call starts clean ones."""
        self._start()
        try:
            return self._run(tasks, breaker)
        except BaseException:
            for w in self._workers:  # busy workers would not read a polite stop message
                self._kill(w)
            self._workers = []
            raise

    def _run(self, tasks: Sequence[tuple[int, str, Mapping[str, Any], Sequence[int], int | None]],
             breaker: CircuitBreaker | None) -> dict[tuple[int, int], dict[str, float] | str]:
        queue = deque((i, resp, dict(row), list(ks), length) for i, resp, row, ks, length in tasks if ks)
        results: dict[tuple[int, int], dict[str, float] | str] = {}
        while queue or any(w.task is not None for w in self._workers):
            for w in self._workers:
                while w.task is None and queue:
                    i, resp, row, ks, length = queue.popleft()
                    # Filtered when sent, not when queued: the breaker may trip mid-batch.
                    ks = [k for k in ks if breaker is None or not breaker.is_disabled(k)]
                    if not ks:
                        continue
                    w.task = (i, resp, row, ks, length)
                    w.remaining = list(ks)
                    w.deadline = time.monotonic() + self.timeout_s
                    w.conn.send(w.task)
            busy = [w for w in self._workers if w.task is not None]
            if not busy:  # everything left in the queue belonged to disabled functions
                break
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy], timeout=wait_s))
            for index, w in enumerate(self._workers):
                if w.task is None:
                    continue
                failure = None
                if w.conn in ready:
                    try:
                        i, k, res = w.conn.recv()
                    except (EOFError, OSError):
                        failure = (f"reward worker died (exit code {w.proc.exitcode}) while running "
                                   f"{self.specs[w.remaining[0]].name!r}")
                    else:
                        results[(i, k)] = res
                        w.remaining.remove(k)
                        w.deadline = time.monotonic() + self.timeout_s
                        if not w.remaining:
                            w.task = None
                        if breaker is not None:
                            breaker.record(k, res)
                        continue
                elif time.monotonic() >= w.deadline:
                    failure = (f"TimeoutError: reward function {self.specs[w.remaining[0]].name!r} ran longer "
                               f"than reward.timeout_s={self.timeout_s:g} s; its worker was killed")
                if failure is not None:
                    i, resp, row, _, length = w.task
                    k = w.remaining[0]
                    results[(i, k)] = failure
                    if len(w.remaining) > 1:
                        queue.append((i, resp, row, w.remaining[1:], length))
                    w.task = None
                    self._replace(index)
                    if breaker is not None:
                        breaker.record(k, failure)
        return results

    def close(self) -> None:
        """Stop the workers (idempotent); the next :meth:`run` starts new ones."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.proc.join(2)
            self._kill(w)
        self._workers = []
