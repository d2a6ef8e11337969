"""The driver: one training step is the data flow

    dataset -> rollout -> reward -> old log-probs -> advantage -> update -> weight sync

with one named, timed phase per arrow, plus validation on the held-out split every
``trainer.val_every`` steps. Algorithms plug in through the hooks of
:class:`rl_vlm.algorithms.base.Algorithm`; this file never asks which algorithm is running.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial

import torch

from rl_vlm.algorithms import Algorithm, StepContext, build_algorithm
from rl_vlm.algorithms.rollout_correction import rollout_correction
from rl_vlm.batch import RolloutBatch, StepShape
from rl_vlm.checkpoint.resume import resume_point, write_resolved_config
from rl_vlm.checkpoint.state import Restored, restore_checkpoint, save_checkpoint
from rl_vlm.checkpoint.store import CheckpointStore
from rl_vlm.config import Config, to_dict
from rl_vlm.data.skipped import SKIPPED_ROWS_FILE, SkippedRowsLog
from rl_vlm.distributed.interfaces import PoolProvider
from rl_vlm.distributed.pools import WorkerFailure
from rl_vlm.driver.evaluation import run_validation
from rl_vlm.driver.experience import (
    answer_mask,
    branch_of,
    learner_batch,
    pad_responses,
    response_views,
)
from rl_vlm.driver.metrics import (
    response_stats,
    reward_metrics,
    run_state_metrics,
    timing_metrics,
)
from rl_vlm.driver.rollout_phase import SampledGroups, produce
from rl_vlm.driver.rollout_queue import RolloutQueue
from rl_vlm.driver.sft import sft_step
from rl_vlm.driver.signals import install_stop_handler
from rl_vlm.driver.system import System, build_system
from rl_vlm.driver.tracking import PhaseTimer, Tracker
from rl_vlm.validation import validate

log = logging.getLogger("rl_vlm.driver")


def train_step(sys_: System, algorithm: Algorithm, step: int,
               queue: RolloutQueue) -> tuple[dict[str, float], SampledGroups]:
    """One RL step, one timed phase per arrow of the data flow; returns the step's metrics and
    the batch it trained on.

    The batch comes from ``queue``: sampled now (``trainer.max_staleness=0``), or earlier, while
    the learners updated (k >= 1; phases ``rollout`` and ``reward`` are then the background
    times, ``rollout_wait`` the time this step waited for them).
    """
    cfg, timer, learners = sys_.cfg, PhaseTimer(), sys_.learner_pool
    seed, G, total = cfg.trainer.seed, cfg.rollout.n, cfg.trainer.total_steps
    t0 = time.perf_counter()
    # Phases "rollout" and "reward" (several rounds with data.dynamic_sampling).
    sampled, waited = queue.take(step)
    timer.times.update(sampled.times)
    timer.times["time/rollout_wait_s"] = waited
    prompts, rollout, scored = sampled.prompts, sampled.rollout, sampled.scored
    if cfg.cluster.colocate:  # the learners' turn on the shared devices, until the weight sync
        with timer("sleep"):
            sys_.rollout.sleep()
    with timer("old_logprob"):
        batch = learner_batch(rollout, algorithm, len(prompts), seed, step)
        shape = StepShape(mini_batch_size=cfg.learner.mini_batch_size, group_size=G,
                          max_response_len=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                          step=step, total_steps=total)
        learners.set_batch(batch, shape)
        old = (learners.compute_logprobs() if cfg.learner.old_logprobs == "recompute"
               else [torch.tensor(lp, dtype=torch.float32) for lp in rollout.rollout_logprobs])
        ref = learners.compute_logprobs("reference") if algorithm.needs_reference else None
        ctx = step_context(sys_, algorithm, rollout, len(prompts), old, ref, step)
    with timer("advantage"):
        mask = ctx.response_mask
        scores = algorithm.score_rollouts(scored.overall, scored.sub_scores, G, ctx)
        adv = algorithm.compute_advantages(scores.rewards, G, ctx)
        selected = algorithm.select_for_update(adv, G, ctx)
        keep = list(range(len(rollout.response_ids))) if selected is None else selected.tolist()
        advantages = [adv[i, : len(rollout.response_ids[i])] for i in keep]
        # Behaviour (engine, at the sample's version) vs proximal (learner, now): TIS / MIS.
        corr = rollout_correction([old[i] for i in keep], [rollout.rollout_logprobs[i] for i in keep],
                                  cfg.algorithm.rollout_correction)
        if corr.weights is not None:
            advantages = [a * w for a, w in zip(advantages, corr.weights, strict=True)]
    with timer("update"):
        if len(keep) != len(rollout.response_ids):  # the algorithm dropped sequences: re-shard
            learners.set_batch(batch.subset(keep), shape)
            learners.compute_views()
        actor = learners.update(advantages, [old[i] for i in keep], None if ref is None else [ref[i] for i in keep])
    with timer("sync_wait"):  # no request may run while the weights change
        queue.drain()
    with timer("sync"):
        versions = sys_.rollout.load_weights(learners.publish_weights(), step)
    staleness = float(step - 1 - rollout.weight_version)  # the learners held version step - 1
    old_pad, _ = pad_responses(old)
    roll_pad, _ = pad_responses(rollout.rollout_logprobs)
    engine_gap = (old_pad - roll_pad).abs() * mask
    return {
        **reward_metrics(sys_, scored),
        **corr.metrics,
        # One weight version per batch: sync happens only between batches (rollout_queue).
        "rollout/staleness_mean": staleness, "rollout/staleness_max": staleness,
        **response_stats(rollout),
        **scores.metrics,
        **algorithm.step_metrics(),
        "advantage/mean": (adv * mask).sum().item() / max(mask.sum().item(), 1),
        "advantage/abs_max": adv.abs().max().item(),
        **{f"actor/{k}": v for k, v in actor.items()},
        # How far the engine's sampling distribution is from the learner's (same weights).
        "rollout/logprob_diff": engine_gap.sum().item() / max(mask.sum().item(), 1),
        "rollout/logprob_max_diff": engine_gap.max().item(),
        **run_state_metrics(sys_, versions),
        **sampled.metrics,
        **timing_metrics(timer, t0, sum(len(p) + len(r) for p, r in zip(rollout.prompt_ids, rollout.response_ids,
                                                                        strict=True))),
    }, sampled


def step_context(sys_: System, algorithm: Algorithm, rollout: RolloutBatch, num_raw_prompts: int,
                 old: list[torch.Tensor], ref: list[torch.Tensor] | None, step: int) -> StepContext:
    """The response-aligned inputs of the driver-side algorithm hooks (contract:
    :mod:`rl_vlm.algorithms.base`); runs the extra learner passes the algorithm asks for."""
    learners = sys_.learner_pool
    old_pad, mask = pad_responses(old)
    views = response_views(learners.compute_views()) if algorithm.views() else {}
    ema = pad_responses(learners.compute_logprobs("ema"))[0] if algorithm.ema_reference() is not None else None
    return StepContext(
        response_mask=mask, old_logprobs=old_pad, step=step, total_steps=sys_.cfg.trainer.total_steps,
        micro_batches=learners.micro_batches, device_mini_batches=learners.device_mini_batches,
        branch=branch_of(rollout, num_raw_prompts), ref_logprobs=None if ref is None else pad_responses(ref)[0],
        views=views, ema_logprobs=ema,
        answer_mask=(answer_mask(sys_.tokenizer, rollout.response_ids, mask.shape[1])
                     if algorithm.needs_answer_span else None))


def train(cfg: Config, pools: PoolProvider | None = None) -> str:
    """Run ``cfg`` to completion; returns the run directory.

    Resumes from ``trainer.resume`` (default: the newest complete checkpoint of the run
    directory). A learner rank that dies makes the system restart from the newest checkpoint,
    at most ``trainer.max_restarts`` times (the provider decides what it replaces: every actor,
    or only the ranks). ``pools``: where the actors come from (default: new ones for this run,
    shut down at its end; see :mod:`rl_vlm.distributed.provider`).
    """
    from rl_vlm.distributed.provider import FreshPools

    validate(cfg)
    provider = pools or FreshPools()
    run_dir = cfg.trainer.output_dir
    os.makedirs(run_dir, exist_ok=True)
    store = CheckpointStore(run_dir, cfg.trainer.keep_last)
    resume_from = resume_point(cfg, store)
    for restart in range(cfg.trainer.max_restarts + 1):
        try:
            return _run(cfg, store, resume_from, provider)
        except WorkerFailure as e:
            provider.release(failed=True)
            resume_from = store.latest()
            where = f"checkpoint {resume_from}" if resume_from else "the start (no checkpoint yet)"
            if restart == cfg.trainer.max_restarts:
                raise RuntimeError(f"{e}; gave up after trainer.max_restarts={cfg.trainer.max_restarts} restarts. "
                                   f"Relaunch the same command to resume from {where}") from e
            log.warning("%s; restarting from %s (restart %d of %d)", e, where, restart + 1,
                        cfg.trainer.max_restarts)
    raise AssertionError("unreachable")


def _run(cfg: Config, store: CheckpointStore, resume_from: str | None, provider: PoolProvider) -> str:
    t, run_dir = cfg.trainer, cfg.trainer.output_dir
    write_resolved_config(cfg, run_dir)
    algorithm = build_algorithm(cfg.algorithm)
    sys_ = build_system(cfg, provider)
    restored = restore_checkpoint(sys_, resume_from) if resume_from else Restored(0, None)
    start = restored.step
    tracker = Tracker(t, run_dir, to_dict(cfg), t.total_steps, start_step=start)
    skipped_rows = SkippedRowsLog(os.path.join(run_dir, SKIPPED_ROWS_FILE))
    stop = install_stop_handler()  # after ray.init, which installs its own SIGTERM handler
    tracker.write(f"run dir {run_dir}: {sys_.learner_pool.num_params / 1e6:.2f} M parameters, "
                  f"{len(sys_.val_prompts)} validation prompts"
                  + (f"; resumed from {resume_from} at step {start}" if resume_from else ""))
    # Batches sampled ahead of the update (trainer.max_staleness); a checkpoint saved its pending ones.
    queue = RolloutQueue(partial(produce, sys_, algorithm), t.max_staleness, t.total_steps, restored.pending)
    try:
        if t.val_every and t.val_before_train and start == 0:
            tracker.log(0, run_validation(sys_))
        for step in range(start + 1, t.total_steps + 1):
            switch = sys_.curriculum.enter(step)  # the stage's sampler and rewards
            if switch:
                tracker.write(switch)
            # Sample ahead (k >= 1; one stage only, validated) after the last step's validation and
            # save: they used the engines and the sampler.
            queue.fill(sys_.rollout.weight_version)
            if sys_.curriculum.stage.cfg.type == "sft":
                metrics = sft_step(sys_, algorithm, step)
            else:
                metrics, sampled = train_step(sys_, algorithm, step, queue)
                tracker.log_prompts(step, sampled.rollout.weight_version, [p.uid for p in sampled.prompts])
            if t.val_every and (step % t.val_every == 0 or step == t.total_steps):
                metrics.update(run_validation(sys_))
            tracker.log(step, metrics)  # before the save: a checkpoint never precedes its metrics
            skipped_rows.update([s.sampler for s in sys_.curriculum.stages])  # new bad rows only
            tracker.advance(1, {k: metrics[k] for k in ("reward/mean", "perf/step_s") if k in metrics})
            if (t.save_every and step % t.save_every == 0) or step == t.total_steps or stop():
                tracker.write(save_checkpoint(sys_, store, step, queue.pending()))
            if stop():
                tracker.write(f"stopped by {stop.signal_name} after step {step}; relaunch the same command to resume")
                break
        else:
            if t.save_final_model:
                sys_.learner_pool.save_hf(os.path.join(run_dir, "final"))
    finally:
        queue.close()  # the batch being sampled finishes first; the pools stay usable
        stop.restore()
        tracker.close()
        sys_.curriculum.close()  # every stage's reward pool
        provider.release(failed=False)
    return run_dir


def evaluate(cfg: Config, pools: PoolProvider | None = None) -> dict[str, float]:
    """Score ``model.path`` on ``data.val_files`` (``data.val_size`` rows, ``rollout.val_n``
    samples each at ``rollout.val_temperature``): reward, accuracy and pass@k. Writes
    ``<output_dir>/eval.json``."""
    import json

    from rl_vlm.distributed.provider import FreshPools

    validate(cfg)
    provider = pools or FreshPools()
    sys_ = build_system(cfg, provider, with_learners=False)
    try:
        metrics = run_validation(sys_)
    finally:
        sys_.curriculum.close()
        provider.release(failed=False)
    os.makedirs(cfg.trainer.output_dir, exist_ok=True)
    with open(os.path.join(cfg.trainer.output_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump({"model": cfg.model.path, "val_files": list(cfg.data.val_files), **metrics}, f, indent=2)
    return metrics
