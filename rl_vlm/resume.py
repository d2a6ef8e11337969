"""Checkpoint save, restore and the resume decision, for the driver loop in
:mod:`rl_vlm.controller` (the storage layer — atomic directories, manifests, RNG capture — is
:mod:`rl_vlm.checkpoint`)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import torch

from rl_vlm.checkpoint import (
    CheckpointError,
    CheckpointStore,
    check_resume_config,
    rng_state,
    save_torch_atomic,
    set_rng_state,
)
from rl_vlm.config import Config, to_dict

if TYPE_CHECKING:
    from rl_vlm.controller import System

log = logging.getLogger("rl_vlm.controller")


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


def resume_point(cfg: Config, store: CheckpointStore) -> str | None:
    """The checkpoint to resume from, after checking the config may change as it does."""
    import yaml

    path = store.resolve(cfg.trainer.resume)
    if cfg.trainer.resume == "off" and store.latest():
        raise CheckpointError(f"trainer.resume=off but {cfg.trainer.output_dir} already holds checkpoints "
                              f"(newest: {store.latest()}); use trainer.resume=auto to continue it, or a new "
                              "trainer.output_dir to start over")
    if path is None:
        return None
    with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    for line in check_resume_config(saved, to_dict(cfg)):
        log.warning("resume from %s applies a config change: %s", path, line)
    return path


def write_resolved_config(cfg: Config, run_dir: str) -> None:
    import yaml

    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
