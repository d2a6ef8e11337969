"""Weight sync through the collective (``cluster.weight_sync=collective``, gloo on CPU): the same
code path as nccl on GPU. A 2-step GRPO run on the tiny model (1 engine, 2 ZeRO-3 ranks) with
1 MiB buckets (the ~0.6 M fp32 parameters span several); step 2's rollouts were sampled with
the weights broadcast after step 1 (the entropy bonus changes them), so the engine's log-probs
must match the learner's."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.controller import train
from rl_vlm.tracking import read_metrics

pytestmark = pytest.mark.e2e

SYNC_TOL = 1e-3  # as in test_train_e2e: fp32 on both sides, kernel order only


def test_collective_weight_sync(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path / "evqa", max_train=32, max_test=8)
    run_dir = tmp_path / "run"
    cfg = compose([
        f"model.path={tiny_model_dir}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
        "data.rollout_batch_size=4", "data.val_size=8", "rollout.n=4", "rollout.max_new_tokens=32",
        "learner.num_ranks=2", "learner.mini_batch_size=2", "learner.micro_batch_size=2", "learner.lr=1e-3",
        "trainer.total_steps=2", "trainer.val_every=0", "trainer.val_before_train=false",
        f"trainer.output_dir={run_dir}", "trainer.progress_bar=false",
        # Random weights earn no reward; the entropy bonus still moves the weights every step,
        # so step 2's rollouts (and their match with the learner) depend on the sync.
        "algorithm.entropy_coef=0.1",
        "cluster.weight_sync=collective", "cluster.weight_sync_bucket_mb=1",
    ])
    train(cfg)
    by_step = {r["step"]: r for r in read_metrics(str(run_dir)) if "sync/version_min" in r}
    assert sorted(by_step) == [1, 2]
    for s in (1, 2):
        assert by_step[s]["sync/version_min"] == s
        assert by_step[s]["actor/grad_norm"] > 0
    assert by_step[2]["rollout/logprob_max_diff"] < SYNC_TOL, by_step[2]["rollout/logprob_max_diff"]
    print("collective sync_s per step:", [round(by_step[s]["time/sync_s"], 3) for s in (1, 2)])
