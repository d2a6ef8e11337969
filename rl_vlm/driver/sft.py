"""One step of an ``sft`` curriculum stage: sample with the current policy, keep the responses the
reward marks correct, one supervised update (token-mean NLL) on them, weight sync."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

from rl_vlm import seeds
from rl_vlm.batch import LearnerBatch, RolloutBatch


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
    from rl_vlm.driver.tracking import PhaseTimer


    cfg, timer = system.cfg, PhaseTimer()
    G, stage = cfg.rollout.n, system.curriculum.stage
    t0 = time.perf_counter()
    with timer("rollout"):
        prompts = system.train_sampler.next_batch()
        rollout = system.rollout.generate(prompts, G, cfg.rollout.temperature, cfg.rollout.top_p,
                                          seed=seeds.rollout_request(cfg.trainer.seed, step))
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
            from rl_vlm.batch import StepShape


            # Temperature 1: the NLL is of the policy itself, not of the sampling distribution.
            system.learners.set_batch(batch, StepShape(
                mini_batch_size=cfg.learner.mini_batch_size, group_size=G, max_response_len=cfg.rollout.max_new_tokens,
                temperature=1.0, step=step, total_steps=cfg.trainer.total_steps))
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
