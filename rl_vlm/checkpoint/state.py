"""What a checkpoint holds: save and restore of the running system (learner shards, driver
state, config), written through :mod:`rl_vlm.checkpoint.store`."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import torch

from rl_vlm.checkpoint.resume import write_resolved_config
from rl_vlm.checkpoint.store import (
    CheckpointStore,
    rng_state,
    save_torch_atomic,
    set_rng_state,
)

if TYPE_CHECKING:
    from rl_vlm.driver.system import System


log = logging.getLogger("rl_vlm.driver")


def save_checkpoint(sys_: System, store: CheckpointStore, step: int) -> str:
    """Write the complete state after ``step`` atomically: learner shards (model, optimizer,
    scheduler, EMA, RNG) + driver state (step, sampler position, RNG, weight version) + config."""
    t0 = time.perf_counter()
    with store.begin(step) as ck:
        sys_.learners.save_checkpoint(ck.path)
        save_torch_atomic(os.path.join(ck.path, "driver.pt"), {
            "step": step, "sampler": sys_.train_sampler.state_dict(), "rng": rng_state(),
            "weight_version": sys_.rollout.weight_version, "curriculum": sys_.curriculum.state_dict()})
        write_resolved_config(sys_.cfg, ck.path)
        # Fault injection for tests: widen the window in which a crash hits a half-written save.
        time.sleep(float(os.environ.get("RL_VLM_FAULT_SAVE_SLEEP_S", "0")))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ck.final_path) for f in fs)
    return f"checkpoint {ck.final_path}: {size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s"


def restore_checkpoint(sys_: System, path: str) -> int:
    """Load checkpoint ``path`` into the running system; returns the step it was taken after."""
    sys_.learners.load_checkpoint(path)
    state = torch.load(os.path.join(path, "driver.pt"), weights_only=False)
    if "curriculum" in state:  # the stage, every stage's sampler position, the difficulty estimates
        sys_.curriculum.load_state_dict(state["curriculum"])
        sys_.curriculum.install(sys_)
    sys_.train_sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    sys_.rollout.load_weights(sys_.learners.publish_weights(), state["weight_version"])
    return int(state["step"])
