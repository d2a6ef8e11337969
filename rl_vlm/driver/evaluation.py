"""Validation on the held-out split: mean reward, accuracy and pass@k (also ``rl-vlm eval``)."""

from __future__ import annotations

import math

import torch

from rl_vlm import seeds
from rl_vlm.driver.system import System


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def run_validation(sys_: System) -> dict[str, float]:
    """Score the held-out prompts: mean reward, accuracy (pass@1) and pass@k for k <= val_n."""
    r = sys_.cfg.rollout
    batch = sys_.rollout.generate(sys_.val_prompts, r.val_n, max(r.val_temperature, 0.0), 1.0,
                                  seed=seeds.VALIDATION)
    rows = [p.row for p in batch.prompts for _ in range(batch.group_size)]
    scored = sys_.rewards.score(batch.response_texts, rows)
    acc = scored.sub_scores[sys_.cfg.reward.accuracy_key].view(-1, batch.group_size)
    out = {"val/reward": scored.overall.mean().item(), "val/accuracy": acc.mean().item()}
    tasks = [str(p.row["task"]) for p in batch.prompts if "task" in p.row]
    if len(tasks) == len(batch.prompts):  # mixed-task data: accuracy per task as well
        for task in sorted(set(tasks)):
            sel = torch.tensor([t == task for t in tasks])
            out[f"val/accuracy/{task}"] = acc[sel].mean().item()
    correct = (acc > 0.5).sum(dim=1).tolist()
    for k in range(2, batch.group_size + 1):
        out[f"val/pass@{k}"] = sum(pass_at_k(batch.group_size, c, k) for c in correct) / len(correct)
    return out
