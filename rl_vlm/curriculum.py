"""Staged curricula (Curr-ReFT, algorithms.md §6), difficulty-aware and dynamic sampling (DAPO).

The driver asks three things of this module, each in a line or two:

* :class:`Curriculum` -- which stage a global step belongs to (stages are consecutive step ranges:
  ``steps``, or ``ceil(epochs * rows / data.rollout_batch_size)``); every stage owns its sampler
  (a seeded :class:`MixtureSampler` over weighted sources) and its :class:`RewardManager`, and
  :meth:`Curriculum.enter` installs them in the system at the stage boundary. With no stages there
  is one implicit stage: ``data.train_files`` through the plain :class:`PromptSampler` and the
  run's ``reward`` -- exactly the run without a curriculum.
* :func:`rollout_and_score` -- the rollout and reward phases of an RL step, with DAPO dynamic
  sampling (:func:`sample_groups`) when ``data.dynamic_sampling`` is on.
* :func:`sft_step` -- one step of an ``sft`` stage: sample with the current policy, keep the
  responses the reward marks correct, one supervised update (token-mean NLL) on them.

Difficulty-aware sampling (``curriculum.difficulty``). After every scored group, the pass rate of
its key (the row's ``uid``, or its ``task``) is updated, p <- (1 - ema) p + ema * mean(accuracy)
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
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rl_vlm.batch import LearnerBatch, Prompt, RolloutBatch
from rl_vlm.config import Config, DataConfig, DifficultyConfig, RewardConfig, StageConfig
from rl_vlm.rewards.manager import RewardManager, RewardResult

log = logging.getLogger("rl_vlm.curriculum")

FRONTIER = (0.2, 0.8)
"""Pass rates counted as the learnable frontier in ``data/frontier_frac``."""
MAX_REJECTIONS = 1000
"""A sampler keeps the next candidate after this many consecutive difficulty rejections (bounds
the work when every row looks solved)."""


# ------------------------------------------------------------------------------ difficulty
def frontier_weight(p: float, floor: float) -> float:
    """w(p) = floor + (1 - floor) * 4 p (1 - p): 1 at p = 0.5, ``floor`` at p = 0 or 1."""
    return floor + (1.0 - floor) * 4.0 * p * (1.0 - p)


class DifficultyTracker:
    """Online pass-rate estimates per row uid or per task (EMA of group mean accuracy)."""

    def __init__(self, cfg: DifficultyConfig) -> None:
        self.cfg = cfg
        self.pass_rate: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "off"

    def key(self, prompt: Prompt) -> str:
        if self.cfg.mode == "uid":
            return prompt.uid
        return str(prompt.row.get("task", ""))

    def observe(self, prompts: Sequence[Prompt], group_accuracy: Sequence[float]) -> None:
        """Update the estimate of each prompt's key with its group's mean accuracy."""
        if not self.enabled:
            return
        for p, acc in zip(prompts, group_accuracy):
            k = self.key(p)
            old = self.pass_rate.get(k)
            self.pass_rate[k] = float(acc) if old is None else (1 - self.cfg.ema) * old + self.cfg.ema * float(acc)

    def accept_prob(self, prompt: Prompt) -> float:
        p = self.pass_rate.get(self.key(prompt))
        return 1.0 if p is None else frontier_weight(p, self.cfg.floor)

    def metrics(self, prompts: Sequence[Prompt]) -> dict[str, float]:
        if not self.enabled:
            return {}
        rates = [self.pass_rate[k] for k in (self.key(p) for p in prompts) if k in self.pass_rate]
        out = {"data/difficulty_keys": float(len(self.pass_rate))}
        if rates:
            out["data/difficulty_mean"] = 1.0 - sum(rates) / len(rates)
            out["data/frontier_frac"] = sum(FRONTIER[0] <= r <= FRONTIER[1] for r in rates) / len(rates)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "pass_rate": dict(self.pass_rate)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Estimates of another mode are keyed differently; starting afresh is the honest choice.
        self.pass_rate = dict(state["pass_rate"]) if state["mode"] == self.cfg.mode else {}


# ------------------------------------------------------------------------------ data
class TaskSubset:
    """The rows of a :class:`~rl_vlm.data.dataset.RowDataset` whose ``task`` field is ``task``
    (duck-types the parts of RowDataset that :class:`PromptSampler` uses)."""

    def __init__(self, dataset: Any, task: str) -> None:
        self.dataset, self.task = dataset, task
        self.index = [i for i, r in enumerate(dataset._rows) if str(r.fields.get("task", "")) == task]
        if not self.index:
            raise ValueError(f"no row of {dataset.files} has task={task!r}")
        self.files = [f"{f} (task={task})" for f in dataset.files]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_bad(self) -> int:
        return len(self.dataset._bad.intersection(self.index))

    def get(self, i: int) -> Prompt | None:
        return self.dataset.get(self.index[i])


class MixtureSampler:
    """Batches drawn from several datasets with weights, seeded and resumable.

    Draw number d picks source k with probability weight_k / Σ weight from
    ``numpy.random.default_rng([seed, d])`` (a pure function of the seed and the draw count, so
    the state is that count plus each source's :class:`PromptSampler` position); the source's
    sampler gives its next row in its own seeded per-epoch order. With a
    :class:`DifficultyTracker`, a candidate is kept with probability ``accept_prob`` (same RNG).
    """

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float], batch_size: int, seed: int,
                 shuffle: bool = True, difficulty: DifficultyTracker | None = None) -> None:
        from rl_vlm.data.dataset import PromptSampler

        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"{len(datasets)} datasets for {len(weights)} weights")
        total = float(sum(weights))
        if not total > 0 or min(weights) < 0:
            raise ValueError(f"source weights {list(weights)} must be >= 0 and sum to > 0")
        self.probs = np.asarray(weights, dtype=np.float64) / total
        self.batch_size, self.seed, self.difficulty = batch_size, seed, difficulty
        self.samplers = [PromptSampler(ds, 1, seed=seed + 7919 * k, shuffle=shuffle) for k, ds in enumerate(datasets)]
        self.draws = 0
        self.num_rejected = 0
        """Candidates skipped by difficulty-aware sampling."""

    @property
    def epoch(self) -> int:
        """The largest epoch any source has reached."""
        return max(s.epoch for s in self.samplers)

    @property
    def num_skipped(self) -> int:
        return sum(s.num_skipped for s in self.samplers)

    def next_batch(self) -> list[Prompt]:
        batch: list[Prompt] = []
        rejections = 0
        while len(batch) < self.batch_size:
            rng = np.random.default_rng([self.seed, self.draws])
            self.draws += 1
            k = min(int(np.searchsorted(np.cumsum(self.probs), rng.random(), side="right")), len(self.probs) - 1)
            prompt = self.samplers[k].next_batch()[0]
            if self.difficulty is not None and self.difficulty.enabled and rejections < MAX_REJECTIONS:
                if rng.random() >= self.difficulty.accept_prob(prompt):
                    rejections += 1
                    self.num_rejected += 1
                    continue
            rejections = 0
            batch.append(prompt)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "num_rejected": self.num_rejected,
                "sources": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["sources"]) != len(self.samplers):
            raise ValueError(f"sampler state has {len(state['sources'])} sources but this sampler has "
                             f"{len(self.samplers)}")
        for s, st in zip(self.samplers, state["sources"]):
            s.load_state_dict(st)
        self.draws, self.num_rejected = int(state["draws"]), int(state["num_rejected"])


# ------------------------------------------------------------------------------ the curriculum
@dataclass
class Stage:
    """A built stage: its config, the step range it covers, its sampler and rewards."""

    index: int
    cfg: StageConfig
    name: str
    first_step: int
    last_step: int | None
    """Inclusive; None for the last stage, which runs until trainer.total_steps."""
    sampler: Any
    rewards: RewardManager


def stage_reward_config(run: RewardConfig, stage: StageConfig) -> RewardConfig:
    """The reward config of ``stage``: its own ``reward``, a ``reward_set`` of the run's
    ``reward.by_task`` for every row, or the run's; the worker pool settings stay the run's."""
    if stage.reward_set:
        return replace(run, functions=run.by_task[stage.reward_set], by_task={})
    if stage.reward is not None:
        return replace(stage.reward, num_workers=run.num_workers, timeout_s=run.timeout_s)
    return run


class Curriculum:
    """The stages of ``cfg.curriculum`` built against ``processor`` (see the module docstring).

    ``dataset_factory(files, template)`` builds a RowDataset (injected by tests)."""

    def __init__(self, cfg: Config, processor: Any = None,
                 dataset_factory: Callable[[Sequence[str], str], Any] | None = None) -> None:
        from rl_vlm.data.dataset import PromptSampler, RowDataset

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
            seed = cfg.trainer.seed + 100_003 * i
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

    def install(self, system: Any) -> None:
        """Point ``system.train_sampler`` / ``system.rewards`` at the current stage's."""
        system.train_sampler, system.rewards = self.sampler, self.rewards

    def enter(self, system: Any, step: int) -> str | None:
        """Move to the stage of ``step`` and install it; returns the console line of a switch
        (or of the first stage of a curriculum), else None."""
        idx = self.stage_at(step)
        switched = idx != self.current or not self.entered
        if idx != self.current:
            self.stages[self.current].rewards.close()  # one reward pool at a time
        self.current, self.entered = idx, True
        self.install(system)
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
        for s, st in zip(self.stages, state["samplers"]):
            s.sampler.load_state_dict(st)
        self.current, self.entered = int(state["stage"]), True
        self.difficulty.load_state_dict(state["difficulty"])


# ------------------------------------------------------------------------------ dynamic sampling
def group_keep(values: torch.Tensor, group_size: int, low: float | None, high: float | None) -> torch.Tensor:
    """[B] bool: groups of ``values`` ([B*G], group-major) whose values are not all equal and
    whose mean lies strictly inside (low, high) (a None bound is open)."""
    g = values.view(-1, group_size).double()
    keep = g.amax(dim=1) > g.amin(dim=1)
    mean = g.mean(dim=1)
    if low is not None:
        keep &= mean > low
    if high is not None:
        keep &= mean < high
    return keep


def filter_values(scored: RewardResult, key: str) -> torch.Tensor:
    if key == "overall":
        return scored.overall
    if key not in scored.sub_scores:
        raise KeyError(f"data.filter_key={key!r} is neither 'overall' nor a reward sub-score "
                       f"({sorted(scored.sub_scores)})")
    return scored.sub_scores[key]


def merge_groups(parts: Sequence[tuple[RolloutBatch, RewardResult, int]]) -> tuple[RolloutBatch, RewardResult]:
    """One RolloutBatch + RewardResult of the chosen groups ``(rollout, scored, group index)``,
    in the given order."""
    G = parts[0][0].group_size
    idx = [(r, s, b * G + j) for r, s, b in parts for j in range(G)]
    rollout = RolloutBatch(
        prompts=[r.prompts[b] for r, _, b in parts], group_size=G,
        prompt_ids=[r.prompt_ids[i] for r, _, i in idx], response_ids=[r.response_ids[i] for r, _, i in idx],
        rollout_logprobs=[r.rollout_logprobs[i] for r, _, i in idx],
        response_texts=[r.response_texts[i] for r, _, i in idx], truncated=[r.truncated[i] for r, _, i in idx],
        weight_version=parts[0][0].weight_version)
    keys = list(dict.fromkeys(k for _, s, _ in parts for k in s.sub_scores))
    n = len(idx)

    def pick(get: Callable[[RewardResult], torch.Tensor | None], dtype: torch.dtype) -> torch.Tensor:
        out = torch.zeros(n, dtype=dtype)
        for row, (_, s, i) in enumerate(idx):
            t = get(s)
            if t is not None:
                out[row] = t[i]
        return out

    errors: dict[str, int] = {}
    for s in {id(s): s for _, s, _ in parts}.values():
        for k, v in s.errors.items():
            errors[k] = errors.get(k, 0) + v
    scored = RewardResult(
        overall=pick(lambda s: s.overall, torch.float32),
        sub_scores={k: pick(lambda s, k=k: s.sub_scores.get(k), torch.float32) for k in keys},
        num_errors=sum(errors.values()), errors=errors,
        present={k: pick(lambda s, k=k: s.present.get(k), torch.bool) for k in keys})
    return rollout, scored


@dataclass
class SampledGroups:
    prompts: list[Prompt]
    """[B] the raw prompts of the batch."""
    rollout: RolloutBatch
    scored: RewardResult
    metrics: dict[str, float]


def sample_groups(draw: Callable[[], list[Prompt]], generate: Callable[[list[Prompt], int], RolloutBatch],
                  score: Callable[[RolloutBatch], RewardResult], data: DataConfig,
                  observe: Callable[[list[Prompt], RewardResult], None] | None = None) -> SampledGroups:
    """Draw, generate and score a batch; with ``data.dynamic_sampling``, DAPO's dynamic sampling.

    Without it: one batch, as drawn. With it: groups failing :func:`group_keep` on
    ``data.filter_key`` are dropped and whole batches are drawn again (``generate(prompts,
    attempt)``, so each round has its own seed) until ``data.rollout_batch_size`` groups are kept
    or ``data.max_sampling_tries`` rounds were run; then the batch is completed with the rejected
    groups of largest spread (max - min of filter_key), so it is always full and the loop always
    ends. Every scored group is passed to ``observe`` (difficulty estimates), kept or not.
    Extra kept groups of the last round are discarded.
    """
    if not data.dynamic_sampling:
        prompts = draw()
        rollout = generate(prompts, 0)
        scored = score(rollout)
        if observe is not None:
            observe(prompts, scored)
        return SampledGroups(prompts, rollout, scored, {})
    B = data.rollout_batch_size
    kept: list[tuple[RolloutBatch, RewardResult, int]] = []
    rejected: list[tuple[float, int, tuple[RolloutBatch, RewardResult, int]]] = []
    attempt = 0
    while attempt < data.max_sampling_tries and len(kept) < B:
        prompts = draw()
        rollout = generate(prompts, attempt)
        scored = score(rollout)
        if observe is not None:
            observe(prompts, scored)
        values = filter_values(scored, data.filter_key)
        ok = group_keep(values, rollout.group_size, data.filter_low, data.filter_high)
        spread = (values.view(-1, rollout.group_size).amax(1) - values.view(-1, rollout.group_size).amin(1)).tolist()
        for b in range(len(prompts)):
            if ok[b]:
                kept.append((rollout, scored, b))
            else:
                rejected.append((spread[b], len(rejected), (rollout, scored, b)))
        attempt += 1
    filled = max(B - len(kept), 0)
    if filled:
        rejected.sort(key=lambda x: (-x[0], x[1]))  # best spread first, then earliest
        kept += [x[2] for x in rejected[:filled]]
        log.info("dynamic sampling: %d of %d groups kept after %d rounds (data.max_sampling_tries); "
                 "filled with %d rejected groups", B - filled, B, attempt, filled)
    rollout, scored = merge_groups(kept[:B])
    metrics = {"data/filtered_groups": float(len(rejected)), "data/sampling_tries": float(attempt),
               "data/sampling_capped": float(filled > 0), "data/filled_groups": float(filled)}
    return SampledGroups(list(rollout.prompts), rollout, scored, metrics)


def rollout_and_score(system: Any, algorithm: Any, step: int, timer: Any) -> SampledGroups:
    """The rollout and reward phases of an RL step (timed as ``rollout`` and ``reward``), with
    dynamic sampling and the difficulty estimates; adds the curriculum's metrics."""
    from rl_vlm.experience import with_rollout_views

    cfg = system.cfg
    seed, G = cfg.trainer.seed, cfg.rollout.n

    def generate(prompts: list[Prompt], attempt: int) -> RolloutBatch:
        with timer("rollout"):
            # Round 0 keeps the seed of a run without dynamic sampling.
            return system.rollout.generate(with_rollout_views(prompts, algorithm, seed, step), G,
                                           cfg.rollout.temperature, cfg.rollout.top_p,
                                           seed=seed * 100_003 + step + 1_000_003 * attempt)

    def score(rollout: RolloutBatch) -> RewardResult:
        with timer("reward"):
            rows = [p.row for p in rollout.prompts for _ in range(G)]
            return system.rewards.score(rollout.response_texts, rows, [len(r) for r in rollout.response_ids])

    def draw() -> list[Prompt]:
        with timer("rollout"):
            return system.train_sampler.next_batch()

    out = sample_groups(draw, generate, score, cfg.data,
                        lambda p, s: system.curriculum.observe(p, s, G))
    out.metrics.update(system.curriculum.metrics(out.prompts))
    return out


# ------------------------------------------------------------------------------ SFT stage
def sft_batch(rollout: RolloutBatch, keep: Sequence[int], seqs_per_update: int) -> tuple[LearnerBatch, list[float]]:
    """The kept sequences as a LearnerBatch padded to a multiple of ``seqs_per_update`` (the
    mini-batch size the learners' gradient accumulation is built for) with weight-0 copies;
    returns it with the per-sequence weights (1 kept, 0 padding)."""
    G = rollout.group_size
    total = math.ceil(len(keep) / seqs_per_update) * seqs_per_update
    order = [keep[j % len(keep)] for j in range(total)]
    weights = [1.0 if j < len(keep) else 0.0 for j in range(total)]
    batch = LearnerBatch([rollout.prompt_ids[i] for i in order], [rollout.response_ids[i] for i in order],
                         [rollout.prompts[i // G].images for i in order])
    return batch, weights


def sft_step(system: Any, algorithm: Any, step: int) -> dict[str, float]:
    """One step of an ``sft`` stage: sample ``data.rollout_batch_size`` prompts x ``rollout.n``
    responses with the current policy, keep those whose accuracy sub-score is >= the stage's
    ``sft_threshold``, one supervised pass on them (token-mean NLL, one optimizer step per
    ``learner.mini_batch_size * rollout.n`` kept responses), weight sync."""
    from rl_vlm.tracking import PhaseTimer

    cfg, timer = system.cfg, PhaseTimer()
    G, stage = cfg.rollout.n, system.curriculum.stage
    t0 = time.perf_counter()
    with timer("rollout"):
        prompts = system.train_sampler.next_batch()
        rollout = system.rollout.generate(prompts, G, cfg.rollout.temperature, cfg.rollout.top_p,
                                          seed=cfg.trainer.seed * 100_003 + step)
    with timer("reward"):
        rows = [p.row for p in prompts for _ in range(G)]
        scored = system.rewards.score(rollout.response_texts, rows, [len(r) for r in rollout.response_ids])
    system.curriculum.observe(prompts, scored, G)
    acc = scored.sub_scores[cfg.reward.accuracy_key]
    keep = [i for i in range(len(rollout.response_ids))
            if acc[i].item() >= stage.cfg.sft_threshold and rollout.response_ids[i]]
    actor: dict[str, float] = {}
    with timer("update"):
        if keep:
            batch, weights = sft_batch(rollout, keep, cfg.learner.mini_batch_size * G)
            # Temperature 1: the NLL is of the policy itself, not of the sampling distribution.
            system.learners.set_batch(batch, cfg.learner.mini_batch_size, G, cfg.rollout.max_new_tokens, 1.0,
                                      step, cfg.trainer.total_steps)
            actor = system.learners.sft_update(weights, [len(r) for r in batch.response_ids])
    with timer("sync"):
        versions = system.rollout.load_weights(system.learners.publish_weights(), step)
    metrics = {
        "reward/mean": scored.overall.mean().item(),
        **{f"reward/{k}": v[scored.present[k]].mean().item() for k, v in scored.sub_scores.items()
           if scored.present[k].any()},
        "reward/accuracy": acc.mean().item(),
        "reward/errors": float(scored.num_errors),
        "sft/kept": float(len(keep)),
        "sft/kept_frac": len(keep) / max(len(rollout.response_ids), 1),
        **{(k if k.startswith("sft/") else f"actor/{k}"): v for k, v in actor.items()},
        "sync/version_min": float(min(versions)),
        "data/epoch": float(system.train_sampler.epoch),
        "data/skipped": float(system.train_sampler.num_skipped),
        **system.curriculum.metrics(prompts),
        **timer.times,
        "perf/step_s": time.perf_counter() - t0,
    }
    return metrics
