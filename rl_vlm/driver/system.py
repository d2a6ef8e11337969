"""The running system the loop drives: data, the two pools, rewards and the curriculum, built once
from a validated config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl_vlm import seeds
from rl_vlm.batch import Prompt
from rl_vlm.config import Config
from rl_vlm.distributed.interfaces import LearnerPool, RolloutPool
from rl_vlm.driver.curriculum import Curriculum
from rl_vlm.rewards.manager import RewardManager
from rl_vlm.validation import resolve_device


@dataclass
class System:
    """Everything the loop drives, built once from the config."""


    cfg: Config
    train_sampler: Any
    val_prompts: list[Prompt]
    rollout: RolloutPool
    learners: LearnerPool | None
    """None in an eval-only system (``build_system(with_learners=False)``)."""
    rewards: RewardManager
    tokenizer: Any
    curriculum: Curriculum = None  # type: ignore[assignment]  # set by build_system
    """Stages, their samplers and rewards; installs the current stage's into ``train_sampler``
    and ``rewards`` (no stages: one stage over ``data.train_files`` with ``reward``)."""


def build_system(cfg: Config, with_learners: bool = True) -> System:
    """Load data, start Ray, place the pools and start every actor (config already validated).
    ``with_learners=False`` starts only the rollout pool (evaluation)."""
    from transformers import AutoProcessor

    from rl_vlm.data.dataset import PromptSampler, RowDataset
    from rl_vlm.distributed.pools import LearnerGroup, RolloutGroup
    from rl_vlm.distributed.runtime import pool_layout, start_ray
    from rl_vlm.distributed.sync.collective import connect_weight_sync


    processor = AutoProcessor.from_pretrained(cfg.model.path)
    d, m = cfg.data, cfg.model
    curriculum = Curriculum(cfg, processor)  # the training data and rewards of every stage
    val = RowDataset(d.val_files, processor, d.prompt_template, m.min_pixels, m.max_pixels, d.max_prompt_length)
    # A fixed, seeded random subset: files such as easy-VQA list ~10 questions per image in a
    # row, so the first N rows would cover only N/10 images.
    val_prompts = PromptSampler(val, min(d.val_size, len(val)), seed=seeds.VALIDATION,
                                shuffle=True).next_batch()
    device = resolve_device(cfg.cluster.device)
    layout = pool_layout(cfg.cluster, cfg.rollout, cfg.learner, device)
    start_ray(cfg, layout)
    rollout = RolloutGroup(cfg, layout, device)
    learners = LearnerGroup(cfg, layout, device) if with_learners else None
    if learners is not None:
        connect_weight_sync(rollout, learners, device)
    return System(cfg, curriculum.sampler, val_prompts, rollout, learners, curriculum.rewards, processor.tokenizer,
                  curriculum)
