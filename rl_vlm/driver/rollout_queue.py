"""Rollout ahead of the update (``trainer.max_staleness`` = k): the batches of the next k steps
are sampled on the rollout pool while the learners update, in a background thread that owns the
engines between weight syncs.

The schedule is fixed, so a run is the same whatever the timing: the batch of step s is sampled
with the weights of version max(0, s − 1 − k), i.e. it is trained on exactly k versions after
the one that sampled it (fewer in the first k steps). This follows from three rules the loop
keeps:

- :meth:`RolloutQueue.fill` after the sync of version v submits the batches up to step v + k + 1;
- :meth:`RolloutQueue.drain` before the sync of version v + 1 waits for every submitted batch,
  so no request ever runs on mixed weights and no batch sees a version it should not;
- the thread is a single worker: batches are sampled in step order, one at a time, and the
  sampler, the difficulty estimates and the reward functions are only ever used by it (the loop
  touches them only while the queue is drained: validation, checkpoints).

With k = 0 nothing runs in the background: :meth:`take` samples the step's batch on the caller's
thread, exactly where the synchronous loop always did. At a checkpoint the queue is drained and
its batches (the steps after the checkpoint's, k of them) are saved with it, so a resumed run
trains on the same samples (:mod:`rl_vlm.checkpoint.state`).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from rl_vlm.driver.rollout_phase import SampledGroups


class RolloutQueue:
    def __init__(self, produce: Callable[[int], SampledGroups], max_staleness: int, last_step: int,
                 restored: bytes | None = None) -> None:
        """``produce(step)``: draw, sample and score step ``step``'s batch on the engines' current
        weights; nothing is sampled for steps after ``last_step`` (the run's last).
        ``restored``: what :meth:`pending` gave a checkpoint; its batches are consumed first."""
        self._produce, self.max_staleness, self.last_step = produce, max_staleness, last_step
        self._ready: dict[int, SampledGroups] = pickle.loads(restored) if restored else {}
        self._running: dict[int, Future[SampledGroups]] = {}
        self._next = max(self._ready, default=0) + 1
        """The first step with no batch yet (submitted or ready)."""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rl_vlm_rollout") if max_staleness else None

    def fill(self, version: int) -> None:
        """The engines hold version ``version``: submit every batch up to step ``version + k + 1``
        (no-op with k = 0)."""
        if self._pool is None:
            return
        self._next = max(self._next, version + 1)
        while self._next <= min(version + self.max_staleness + 1, self.last_step):
            self._running[self._next] = self._pool.submit(self._produce, self._next)
            self._next += 1

    def take(self, step: int) -> tuple[SampledGroups, float]:
        """Step ``step``'s batch and the seconds spent waiting for it (0 when it was ready; with
        k = 0, the time to sample it here)."""
        t0 = time.perf_counter()
        if step in self._ready:
            out = self._ready.pop(step)
        elif step in self._running:
            out = self._running.pop(step).result()
        else:
            if self._pool is not None:
                raise RuntimeError(f"step {step}'s batch was never submitted (RolloutQueue.fill)")
            out = self._produce(step)
            self._next = max(self._next, step + 1)
        return out, time.perf_counter() - t0

    def drain(self) -> float:
        """Wait for every submitted batch (before a weight sync or anything else that uses the
        engines or the sampler); returns the seconds waited."""
        t0 = time.perf_counter()
        for step in sorted(self._running):
            self._ready[step] = self._running.pop(step).result()
        return time.perf_counter() - t0

    def pending(self) -> bytes | None:
        """The sampled batches not yet trained on (step -> batch), after :meth:`drain`, serialized
        for a checkpoint (None when there are none)."""
        self.drain()
        return pickle.dumps(self._ready) if self._ready else None

    def close(self) -> None:
        """Stop after the batch being sampled, if any (batches not started are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
