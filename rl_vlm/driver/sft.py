"""One step of an ``sft`` curriculum stage: sample with the current policy, keep the responses the
reward marks correct, one supervised update (token-mean NLL) on them, weight sync."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rl_vlm import seeds
from rl_vlm.algorithms import Algorithm
from rl_vlm.batch import LearnerBatch, RolloutBatch, StepShape
from rl_vlm.driver.metrics import reward_metrics, run_state_metrics, timing_metrics
from rl_vlm.driver.system import System
from rl_vlm.driver.tracking import PhaseTimer


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


def sft_step(sys_: System, algorithm: Algorithm, step: int) -> dict[str, float]:
    """One step of an ``sft`` stage: sample ``data.rollout_batch_size`` prompts x ``rollout.n``
    responses with the current policy, keep those whose accuracy sub-score is >= the stage's
    ``sft_threshold``, one supervised pass on them (token-mean NLL, one optimizer step per
    ``learner.mini_batch_size * rollout.n`` kept responses), weight sync. ``algorithm`` is
    unused: the update is the plain NLL whatever the run's algorithm."""
    cfg, timer, learners = sys_.cfg, PhaseTimer(), sys_.learner_pool
    G, stage = cfg.rollout.n, sys_.curriculum.stage
    t0 = time.perf_counter()
    with timer("rollout"):
        prompts = sys_.train_sampler.next_batch()
        rollout = sys_.rollout.generate(prompts, G, cfg.rollout.temperature, cfg.rollout.top_p,
                                        seed=seeds.rollout_request(cfg.trainer.seed, step))
    with timer("reward"):
        rows = [p.row for p in prompts for _ in range(G)]
        scored = sys_.rewards.score(rollout.response_texts, rows, [len(r) for r in rollout.response_ids])
    sys_.curriculum.observe(prompts, scored, G)
    acc = scored.sub_scores[cfg.reward.accuracy_key]
    keep = [i for i in range(len(rollout.response_ids))
            if acc[i].item() >= stage.cfg.sft_threshold and rollout.response_ids[i]]
    actor: dict[str, float] = {}
    if cfg.cluster.colocate:  # the learners' turn on the shared devices, until the weight sync
        with timer("sleep"):
            sys_.rollout.sleep()
    with timer("update"):
        if keep:
            batch, weights = sft_batch(rollout, keep, cfg.learner.mini_batch_size * G)
            # Temperature 1: the NLL is of the policy itself, not of the sampling distribution.
            learners.set_batch(batch, StepShape(
                mini_batch_size=cfg.learner.mini_batch_size, group_size=G, max_response_len=cfg.rollout.max_new_tokens,
                temperature=1.0, step=step, total_steps=cfg.trainer.total_steps))
            actor = learners.sft_update(weights, [len(r) for r in batch.response_ids])
    with timer("sync"):
        versions = sys_.rollout.load_weights(learners.publish_weights(), step)
    return {
        **reward_metrics(sys_, scored),
        "sft/kept": float(len(keep)),
        "sft/kept_frac": len(keep) / max(len(rollout.response_ids), 1),
        **{(k if k.startswith("sft/") else f"actor/{k}"): v for k, v in actor.items()},
        **run_state_metrics(sys_, versions),
        **sys_.curriculum.metrics(prompts),
        **timing_metrics(timer, t0),
    }
