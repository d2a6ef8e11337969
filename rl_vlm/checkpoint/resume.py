"""The resume decision: which checkpoint a run continues from, and which config keys may change
when it does."""

from __future__ import annotations

import logging
import os
from typing import Any

from rl_vlm.checkpoint.store import CheckpointError, CheckpointStore
from rl_vlm.config import Config, to_dict

log = logging.getLogger("rl_vlm.checkpoint")

FIXED_ON_RESUME: dict[str, str] = {
    "model.path": "the checkpoint holds weights of the saved model",
    "model.dtype": "the optimizer state was saved in the saved dtype",
    "learner.num_ranks": "ZeRO-3 shards are per rank; resume with the saved world size",
    "learner.zero_stage": "the shard layout depends on the ZeRO stage",
    "learner.lr": "the restored optimizer and LR scheduler carry the saved learning rate",
    "algorithm.name": "the algorithm's state (e.g. an EMA reference) belongs to the saved algorithm",
    "data.train_files": "the sampler position refers to the saved training files",
    "data.rollout_batch_size": "the sampler position counts batches of the saved size",
    "data.shuffle": "the sampler order depends on it",
    "trainer.seed": "the sampler order and the rollout seeds depend on it",
    "rollout.n": "group sizes of the remaining steps would differ from the saved run",
    "curriculum.stages": "the saved stage and sampler positions refer to the saved stages",
}
"""Keys a resumed run cannot change, with the reason given in the error."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def check_resume_config(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Compare the saved run's config with the current one (both plain dicts, as
    :func:`rl_vlm.config.to_dict` gives). A change of a :data:`FIXED_ON_RESUME` key raises
    CheckpointError naming it; every other change is returned as ``"key: old -> new"`` lines to
    be reported (they are applied)."""
    old, new = _flatten(saved), _flatten(current)
    for key, why in FIXED_ON_RESUME.items():
        if key in old and old.get(key) != new.get(key):
            raise CheckpointError(f"{key} changed on resume ({old.get(key)!r} -> {new.get(key)!r}): {why}. "
                                  "Use the saved value, or start a new run (trainer.output_dir) from an "
                                  "exported checkpoint (rl-vlm export)")
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


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
