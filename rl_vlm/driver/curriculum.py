"""Staged curricula (Curr-ReFT, algorithms.md §6) and difficulty-aware sampling.

:class:`Curriculum` tells the loop which stage a global step belongs to (stages are consecutive
step ranges: ``steps``, or ``ceil(epochs * rows / data.rollout_batch_size)``); every stage owns its
sampler (a seeded :class:`~rl_vlm.data.sampling.MixtureSampler` over weighted sources) and its
:class:`RewardManager`, and :meth:`Curriculum.enter` installs them in the system at the stage
boundary. With no stages there is one implicit stage: ``data.train_files`` through the plain
:class:`~rl_vlm.data.sampling.PromptSampler` and the run's ``reward`` -- exactly the run without a
curriculum. The samplers themselves live in :mod:`rl_vlm.data.sampling`; this module is their user.
Difficulty-aware sampling (``curriculum.difficulty``). After every scored group, the pass rate of
its key (the row's ``uid``, or its ``task``) is updated
(:class:`~rl_vlm.data.sampling.DifficultyTracker`), p <- (1 - ema) p + ema * mean(accuracy)
(the first group sets p). A candidate row drawn by a sampler is then kept with probability

    w(p) = floor + (1 - floor) * 4 p (1 - p)        (unseen keys: w = 1)

and otherwise skipped (the sampler moves on). So a row's chance of being trained on is
proportional to w(p): 1 on the learnable frontier p = 0.5, ``floor`` for rows always solved or
never solved. Logged: ``data/difficulty_mean`` (mean 1 - p over the step's prompts with an
estimate), ``data/frontier_frac`` (the share of those with 0.2 <= p <= 0.8) and
``data/difficulty_keys`` (keys tracked).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rl_vlm import seeds
from rl_vlm.batch import Prompt
from rl_vlm.config import Config, RewardConfig, StageConfig
from rl_vlm.data.sampling import (
    DifficultyTracker,
    MixtureSampler,
    PromptSampler,
    Sampler,
    TaskSubset,
)
from rl_vlm.rewards.manager import RewardManager, RewardResult

log = logging.getLogger("rl_vlm.driver")


@dataclass
class Stage:
    """A built stage: its config, the step range it covers, its sampler and rewards."""

    index: int
    cfg: StageConfig
    name: str
    first_step: int
    last_step: int | None
    """Inclusive; None for the last stage, which runs until trainer.total_steps."""
    sampler: Sampler
    rewards: RewardManager


def stage_reward_config(run: RewardConfig, stage: StageConfig) -> RewardConfig:
    """The reward config of ``stage``: its own ``reward``, a ``reward_set`` of the run's
    ``reward.by_task`` for every row, or the run's; the worker pool and circuit-breaker settings stay
    the run's."""
    if stage.reward_set:
        return replace(run, functions=run.by_task[stage.reward_set], by_task={})
    if stage.reward is not None:
        return replace(stage.reward, num_workers=run.num_workers, timeout_s=run.timeout_s,
                       max_consecutive_errors=run.max_consecutive_errors,
                       on_repeated_errors=run.on_repeated_errors)
    return run


class Curriculum:
    """The stages of ``cfg.curriculum`` built against ``processor`` (see the module docstring).

    ``dataset_factory(files, template)`` builds a RowDataset (injected by tests)."""

    def __init__(self, cfg: Config, processor: Any = None,
                 dataset_factory: Callable[[Sequence[str], str], Any] | None = None) -> None:
        from rl_vlm.data.dataset import RowDataset

        d, m = cfg.data, cfg.model
        self.cfg = cfg
        if dataset_factory is None:
            def dataset_factory(files: Sequence[str], template: str) -> Any:
                return RowDataset(files, processor, template, m.min_pixels, m.max_pixels, d.max_prompt_length)
        self.difficulty = DifficultyTracker(cfg.curriculum.difficulty)
        cache: dict[tuple[tuple[str, ...], str], Any] = {}

        def dataset(files: Sequence[str], template: str) -> Any:
            key = (tuple(files), template)
            if key not in cache:
                cache[key] = dataset_factory(list(files), template)
            return cache[key]

        stage_cfgs = cfg.curriculum.stages or (StageConfig(name="main", steps=max(cfg.trainer.total_steps, 1)),)
        self.stages: list[Stage] = []
        first = 1
        for i, s in enumerate(stage_cfgs):
            template = s.prompt_template or d.prompt_template
            if s.sources:
                datasets = [dataset(src.files, template) if src.files else
                            TaskSubset(dataset(d.train_files, template), src.task) for src in s.sources]
                weights = [src.weight for src in s.sources]
            else:
                datasets, weights = [dataset(d.train_files, template)], [1.0]
            seed = seeds.stage_sampler(cfg.trainer.seed, i)
            if not cfg.curriculum.stages and not self.difficulty.enabled:
                # No curriculum: the plain sampler, so runs (and checkpoints) are exactly as before.
                sampler: Any = PromptSampler(datasets[0], d.rollout_batch_size, seed=seed, shuffle=d.shuffle)
            else:
                sampler = MixtureSampler(datasets, weights, d.rollout_batch_size, seed, d.shuffle, self.difficulty)
            length = s.steps or math.ceil(s.epochs * sum(len(x) for x in datasets) / d.rollout_batch_size)
            last = None if i == len(stage_cfgs) - 1 else first + length - 1
            rewards = RewardManager(stage_reward_config(cfg.reward, s))
            self.stages.append(Stage(i, s, s.name or f"stage{i}", first, last, sampler, rewards))
            first += length
        self.current = 0
        self.entered = False
        planned = first - 1
        if cfg.curriculum.stages and planned != cfg.trainer.total_steps:
            log.warning("the curriculum's stages cover %d steps but trainer.total_steps=%d (%s)", planned,
                        cfg.trainer.total_steps, "the last stage runs on" if planned < cfg.trainer.total_steps
                        else "the run stops before the last stages end")

    # ---------------------------------------------------------------- position
    @property
    def stage(self) -> Stage:
        return self.stages[self.current]

    @property
    def sampler(self) -> Any:
        return self.stage.sampler

    @property
    def rewards(self) -> RewardManager:
        return self.stage.rewards

    def stage_at(self, step: int) -> int:
        """Index of the stage that training step ``step`` (1-based) belongs to."""
        for s in self.stages:
            if s.last_step is None or step <= s.last_step:
                return s.index
        return len(self.stages) - 1

    def enter(self, step: int) -> str | None:
        """Move to the stage of ``step`` (its :attr:`sampler` and :attr:`rewards` become the
        run's); returns the console line of a switch (or of the first stage of a curriculum),
        else None."""
        idx = self.stage_at(step)
        switched = idx != self.current or not self.entered
        if idx != self.current:
            self.stages[self.current].rewards.close()  # one reward pool at a time
        self.current, self.entered = idx, True
        if not switched or not self.cfg.curriculum.stages:
            return None
        s = self.stage
        end = "the end" if s.last_step is None else f"step {s.last_step}"
        return (f"curriculum {self.cfg.curriculum.name}: step {step} enters stage {s.index} '{s.name}' "
                f"({s.cfg.type}, until {end}; rewards {list(s.rewards.names)})")

    # ---------------------------------------------------------------- per step
    def observe(self, prompts: Sequence[Prompt], scored: RewardResult, group_size: int) -> None:
        """Feed the groups' pass rates (mean accuracy sub-score) to the difficulty estimates;
        ``prompts`` are the raw prompts, whose groups come first in ``scored``."""
        if not self.difficulty.enabled:
            return
        acc = scored.sub_scores[self.cfg.reward.accuracy_key][: len(prompts) * group_size]
        self.difficulty.observe(prompts, acc.view(-1, group_size).mean(dim=1).tolist())

    def metrics(self, prompts: Sequence[Prompt]) -> dict[str, float]:
        out = {"curriculum/stage": float(self.current)} if self.cfg.curriculum.stages else {}
        return {**out, **self.difficulty.metrics(prompts)}

    def close(self) -> None:
        for s in self.stages:
            s.rewards.close()

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The current stage, every stage's sampler position and the difficulty estimates."""
        return {"stage": self.current, "samplers": [s.sampler.state_dict() for s in self.stages],
                "difficulty": self.difficulty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["samplers"]) != len(self.stages):
            raise ValueError(f"checkpoint has {len(state['samplers'])} curriculum stages, the config "
                             f"{len(self.stages)}")
        for s, st in zip(self.stages, state["samplers"], strict=True):
            s.sampler.load_state_dict(st)
        self.current, self.entered = int(state["stage"]), True
        self.difficulty.load_state_dict(state["difficulty"])
