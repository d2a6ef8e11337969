"""The per-step metrics every step kind reports (one builder for RL and SFT steps)."""

from __future__ import annotations

import torch

from rl_vlm.batch import RolloutBatch


def response_stats(rollout: RolloutBatch) -> dict[str, float]:
    lengths = torch.tensor([len(r) for r in rollout.response_ids], dtype=torch.float32)
    return {"response/length_mean": lengths.mean().item(), "response/length_max": lengths.max().item(),
            "response/truncated_frac": sum(rollout.truncated) / max(len(rollout.truncated), 1)}
