"""The rollout and reward phases of an RL step: draw prompts, sample ``rollout.n`` responses per
prompt on the rollout pool, score them; with ``data.dynamic_sampling``, DAPO's dynamic sampling
(groups whose rewards do not vary are dropped and batches drawn again)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from rl_vlm import seeds
from rl_vlm.batch import Prompt, RolloutBatch
from rl_vlm.config import DataConfig
from rl_vlm.rewards.manager import RewardResult

log = logging.getLogger("rl_vlm.driver")


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


def _sub_score(s: RewardResult, key: str) -> torch.Tensor | None:
    return s.sub_scores.get(key)


def _present(s: RewardResult, key: str) -> torch.Tensor | None:
    return s.present.get(key)


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
        sub_scores={k: pick(partial(_sub_score, key=k), torch.float32) for k in keys},
        num_errors=sum(errors.values()), errors=errors,
        present={k: pick(partial(_present, key=k), torch.bool) for k in keys})
    return rollout, scored


@dataclass
class SampledGroups:
    prompts: list[Prompt]
    """[B] the raw prompts of the batch."""
    rollout: RolloutBatch
    scored: RewardResult
    metrics: dict[str, float]
    times: dict[str, float] = field(default_factory=dict)
    """``time/rollout_s`` and ``time/reward_s`` of sampling this batch (:func:`produce`)."""


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
    from rl_vlm.driver.experience import with_rollout_views

    cfg = system.cfg
    seed, G = cfg.trainer.seed, cfg.rollout.n

    def generate(prompts: list[Prompt], attempt: int) -> RolloutBatch:
        with timer("rollout"):
            # Round 0 keeps the seed of a run without dynamic sampling.
            return system.rollout.generate(with_rollout_views(prompts, algorithm, seed, step), G,
                                           cfg.rollout.temperature, cfg.rollout.top_p,
                                           seed=seeds.rollout_request(seed, step, attempt))

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


def produce(system: Any, algorithm: Any, step: int) -> SampledGroups:
    """Step ``step``'s batch, sampled and scored on the engines' current weights, with the time
    its phases took (it may run ahead of the update: :mod:`rl_vlm.driver.rollout_queue`)."""
    from rl_vlm.driver.tracking import PhaseTimer

    timer = PhaseTimer()
    out = rollout_and_score(system, algorithm, step, timer)
    out.times = dict(timer.times)
    # As of this batch's scoring: read later, it would count a batch sampled ahead of it.
    out.metrics["reward/disabled"] = float(system.rewards.num_disabled)
    return out
