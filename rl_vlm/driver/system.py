"""The running system the loop drives: data, the two pools, rewards and the curriculum, built once
from a validated config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rl_vlm import seeds
from rl_vlm.batch import Prompt
from rl_vlm.config import Config
from rl_vlm.data.sampling import Sampler
from rl_vlm.distributed.interfaces import LearnerPool, PoolProvider, RolloutPool
from rl_vlm.driver.curriculum import Curriculum
from rl_vlm.rewards.manager import RewardManager

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class System:
    """Everything the loop drives, built once from the config."""

    cfg: Config
    val_prompts: list[Prompt]
    rollout: RolloutPool
    learners: LearnerPool | None
    """None in an eval-only system (``build_system(..., with_learners=False)``)."""
    tokenizer: PreTrainedTokenizerBase
    curriculum: Curriculum
    """Stages, their samplers and rewards (no stages: one stage over ``data.train_files`` with
    ``reward``); :meth:`Curriculum.enter` moves it to a step's stage."""

    @property
    def train_sampler(self) -> Sampler:
        """The current stage's sampler."""
        return self.curriculum.sampler

    @property
    def rewards(self) -> RewardManager:
        """The current stage's rewards."""
        return self.curriculum.rewards

    @property
    def learner_pool(self) -> LearnerPool:
        """The learner pool of a training system."""
        if self.learners is None:
            raise RuntimeError("this system was built for evaluation: it has no learner pool")
        return self.learners


def build_system(cfg: Config, provider: PoolProvider, with_learners: bool = True) -> System:
    """Load the data (bad data stops the run before any actor starts), then get the pools from
    ``provider`` (config already validated). ``with_learners=False``: the rollout pool only
    (evaluation)."""
    from transformers import AutoProcessor

    from rl_vlm.data.dataset import RowDataset
    from rl_vlm.data.sampling import PromptSampler

    processor = AutoProcessor.from_pretrained(cfg.model.path)
    d, m = cfg.data, cfg.model
    curriculum = Curriculum(cfg, processor)  # the training data and rewards of every stage
    val = RowDataset(d.val_files, processor, d.prompt_template, m.min_pixels, m.max_pixels, d.max_prompt_length)
    # A fixed, seeded random subset: files such as easy-VQA list ~10 questions per image in a
    # row, so the first N rows would cover only N/10 images.
    val_prompts = PromptSampler(val, min(d.val_size, len(val)), seed=seeds.VALIDATION,
                                shuffle=True).next_batch()
    pools = provider.acquire(cfg, with_learners)
    return System(cfg, val_prompts, pools.rollout, pools.learners, processor.tokenizer, curriculum)
