"""The per-step metrics every step kind reports, built in one place for RL and SFT steps (each
step adds what only it has: advantages and the actor's loss terms, or the SFT kept counts)."""

from __future__ import annotations

import time

import torch

from rl_vlm.batch import RolloutBatch
from rl_vlm.driver.system import System
from rl_vlm.driver.tracking import PhaseTimer
from rl_vlm.rewards.manager import RewardResult


def response_stats(rollout: RolloutBatch) -> dict[str, float]:
    """Response and prompt lengths in tokens (a prompt's count includes its visual tokens)."""
    lengths = torch.tensor([len(r) for r in rollout.response_ids], dtype=torch.float32)
    prompts = torch.tensor([len(p) for p in rollout.prompt_ids], dtype=torch.float32)
    return {"response/length_mean": lengths.mean().item(), "response/length_max": lengths.max().item(),
            "response/truncated_frac": sum(rollout.truncated) / max(len(rollout.truncated), 1),
            "prompt/length_mean": prompts.mean().item(), "prompt/length_max": prompts.max().item()}


def reward_metrics(sys_: System, scored: RewardResult) -> dict[str, float]:
    """``reward/*``: the overall reward, every sub-score, errors and circuit-broken functions."""
    out = {
        "reward/mean": scored.overall.mean().item(),
        "reward/std": scored.overall.std().item(),
        # Mixed-task batches: a sub-score is averaged over the samples that were scored with it.
        **{f"reward/{k}": v[scored.present[k]].mean().item() for k, v in scored.sub_scores.items()
           if scored.present[k].any()},
        "reward/errors": float(scored.num_errors),
        # Read from the stage's manager, not the result: merged dynamic-sampling rounds keep it.
        "reward/disabled": float(sys_.rewards.num_disabled),
    }
    key = sys_.cfg.reward.accuracy_key
    if key in scored.sub_scores:  # over every sample, whichever task it was scored for
        out["reward/accuracy"] = scored.sub_scores[key].mean().item()
    return out


def run_state_metrics(sys_: System, versions: list[int]) -> dict[str, float]:
    """Where the run stands after the step: the weight version every engine holds, restarted
    engines, the data epoch and the distinct bad rows met so far."""
    return {"sync/version_min": float(min(versions)), "rollout/restarts": float(sys_.rollout.restarts),
            "data/epoch": float(sys_.train_sampler.epoch), "data/skipped": float(sys_.train_sampler.num_skipped)}


def timing_metrics(timer: PhaseTimer, t0: float, num_tokens: int | None = None) -> dict[str, float]:
    """``time/<phase>_s`` of every phase, the step's wall time and, given the step's prompt +
    response tokens, its throughput."""
    step_s = time.perf_counter() - t0
    out = {**timer.times, "perf/step_s": step_s}
    if num_tokens is not None:
        out["perf/tokens_per_s"] = num_tokens / step_s
    return out
