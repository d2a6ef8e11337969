"""What a checkpoint holds: save and restore of the running system (learner shards, driver
state, config), written through :mod:`rl_vlm.checkpoint.store`."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rl_vlm.checkpoint.resume import write_resolved_config
from rl_vlm.checkpoint.store import (
    CheckpointStore,
    save_torch_atomic,
)
from rl_vlm.config import Config
from rl_vlm.data.sampling import Sampler
from rl_vlm.distributed.interfaces import LearnerPool, RolloutPool
from rl_vlm.seeds import rng_state, set_rng_state

log = logging.getLogger("rl_vlm.checkpoint")


class StagedState(Protocol):
    """The curriculum's part of a checkpoint: current stage, every stage's sampler position,
    difficulty estimates."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Resumable(Protocol):
    """What a checkpoint saves from and restores into: the driver's running system
    (:class:`rl_vlm.driver.system.System`), seen through the parts that hold state."""

    @property
    def cfg(self) -> Config: ...

    @property
    def rollout(self) -> RolloutPool: ...

    @property
    def learner_pool(self) -> LearnerPool: ...

    @property
    def train_sampler(self) -> Sampler: ...

    @property
    def curriculum(self) -> StagedState: ...


@dataclass
class Restored:
    """What :func:`restore_checkpoint` hands back to the loop."""

    step: int
    """The step the checkpoint was taken after (0: a fresh start)."""
    pending: bytes | None
    """The batches sampled ahead of the update and not yet trained on (``trainer.max_staleness``),
    serialized by the driver's rollout queue (opaque here); None when there were none."""


def save_checkpoint(sys_: Resumable, store: CheckpointStore, step: int, pending: bytes | None) -> str:
    """Write the complete state after ``step`` atomically: learner shards (model, optimizer,
    scheduler, EMA, RNG) + driver state (step, sampler position, RNG, weight version, the
    ``pending`` batches sampled ahead of the update) + config.

    The pending batches are saved rather than sampled again on resume: they were sampled with
    weights older than the checkpoint's, which no checkpoint holds, and the sampler position
    saved with them is already past them."""
    t0 = time.perf_counter()
    with store.begin(step) as ck:
        sys_.learner_pool.save_checkpoint(ck.path)
        save_torch_atomic(os.path.join(ck.path, "driver.pt"), {
            "step": step, "sampler": sys_.train_sampler.state_dict(), "rng": rng_state(),
            "weight_version": sys_.rollout.weight_version, "curriculum": sys_.curriculum.state_dict(),
            "pending": pending})
        write_resolved_config(sys_.cfg, ck.path)
        # Fault injection for tests: widen the window in which a crash hits a half-written save.
        time.sleep(float(os.environ.get("RL_VLM_FAULT_SAVE_SLEEP_S", "0")))
    final = ck.final_path
    assert final is not None  # set by the commit when the block exits cleanly
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(final) for f in fs)
    return f"checkpoint {final}: {size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s"


def restore_checkpoint(sys_: Resumable, path: str) -> Restored:
    """Load checkpoint ``path`` into the running system; returns the step it was taken after and
    the batches it saved for the steps after it."""
    sys_.learner_pool.load_checkpoint(path)
    state = torch.load(os.path.join(path, "driver.pt"), weights_only=False)
    if "curriculum" in state:  # the stage, every stage's sampler position, the difficulty estimates
        sys_.curriculum.load_state_dict(state["curriculum"])  # train_sampler is the restored stage's
    sys_.train_sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    sys_.rollout.load_weights(sys_.learner_pool.publish_weights(), state["weight_version"])
    # Checkpoints written before rollout could run ahead hold no pending batches.
    return Restored(int(state["step"]), state["pending"] if "pending" in state else None)
