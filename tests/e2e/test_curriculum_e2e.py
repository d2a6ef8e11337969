"""A three-stage curriculum through the real stack (Ray + vLLM + DeepSpeed ZeRO-3) on the tiny model:
yes/no RL (2 steps) -> colour/shape RL with dynamic sampling and difficulty-aware sampling (1 step)
-> rejection-sampling SFT (1 step). The stages switch at the configured steps, each step is scored
with its stage's reward functions, and the final checkpoint holds the curriculum position."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rl_vlm.compose import compose
from rl_vlm.config import (
    CurriculumConfig,
    DataSourceConfig,
    DifficultyConfig,
    RewardConfig,
    RewardFunctionConfig,
    StageConfig,
)
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

pytestmark = pytest.mark.e2e


def test_curriculum_stages_switch_and_score_with_their_rewards(warm_model_dir: Path, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str],
                                                               shared_pools: SharedPools) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path / "easy_vqa", max_train=400, max_test=40)
    files = {t: str(train_file.parent / f"train_{t}.jsonl") for t in ("yes_no", "color", "shape")}
    yes_no = RewardConfig(functions=(RewardFunctionConfig(name="exact_match", key="accuracy"),
                                     RewardFunctionConfig(name="exact_match", weight=0.0, key="yes_no_match")))
    stages = (
        StageConfig(name="yes_no", steps=2, sources=(DataSourceConfig(files=(files["yes_no"],)),), reward=yes_no),
        StageConfig(name="classify", steps=1, sources=(DataSourceConfig(files=(files["color"],), weight=0.5),
                                                      DataSourceConfig(files=(files["shape"],), weight=0.5))),
        StageConfig(name="self_improve", type="sft", steps=1, sft_threshold=1.0,
                    sources=(DataSourceConfig(files=(files["color"],)),)),
    )
    run_dir = tmp_path / "run"
    cfg = compose([
        f"model.path={warm_model_dir}", f"data.train_files=[{files['color']}]", f"data.val_files=[{test_file}]",
        "data.rollout_batch_size=2", "data.val_size=4", "rollout.n=4", "rollout.max_new_tokens=24",
        "data.dynamic_sampling=true", "data.filter_key=accuracy", "data.max_sampling_tries=2",
        "learner.num_ranks=2", "learner.mini_batch_size=1", "learner.micro_batch_size=2", "learner.lr=1e-3",
        "trainer.total_steps=4", "trainer.val_every=0", f"trainer.output_dir={run_dir}",
        "trainer.progress_bar=false",
        # Orthogonal to the curriculum, and one system start cheaper than a run of its own:
        # π_old from vLLM's sampling log-probs instead of a learner pass.
        "learner.old_logprobs=rollout",
    ])
    cfg = replace(cfg, curriculum=CurriculumConfig(name="e2e", stages=stages,
                                                   difficulty=DifficultyConfig(mode="uid")))
    train(cfg, pools=shared_pools)

    by_step = {r["step"]: r for r in read_metrics(str(run_dir))}
    assert sorted(by_step) == [1, 2, 3, 4]
    assert [by_step[s]["curriculum/stage"] for s in range(1, 5)] == [0, 0, 1, 2]
    for s in (1, 2):  # yes/no stage: exact match only, the format reward is not in the set
        assert "reward/yes_no_match" in by_step[s] and "reward/format" not in by_step[s]
        assert by_step[s]["reward/yes_no_match"] == by_step[s]["reward/accuracy"]
    for s in (3, 4):  # the run's default rewards (format 0.1 + accuracy 0.9)
        assert "reward/format" in by_step[s] and "reward/yes_no_match" not in by_step[s]
    for s in (1, 2, 3):  # RL steps: dynamic sampling ran, the batch is full
        r = by_step[s]
        assert 1 <= r["data/sampling_tries"] <= 2 and r["data/filled_groups"] <= 2
        assert r["data/difficulty_keys"] > 0
        assert r["sync/version_min"] == s
        # π_old is exactly what the engine sampled with (no learner recompute), and the update ran on it.
        assert r["rollout/logprob_diff"] == 0.0 and math.isfinite(r["actor/pg_loss"])
    sft = by_step[4]
    assert sft["sync/version_min"] == 4
    assert 0 <= sft["sft/kept"] <= 8
    if sft["sft/kept"] > 0:
        assert sft["sft/loss"] > 0 and sft["actor/grad_norm"] > 0
    out = capfd.readouterr().out
    assert "step 1 enters stage 0 'yes_no'" in out
    assert "step 3 enters stage 1 'classify'" in out
    assert "step 4 enters stage 2 'self_improve'" in out
    state = torch.load(os.path.join(run_dir, "checkpoints", "step_4", "driver.pt"), weights_only=False)
    assert state["curriculum"]["stage"] == 2 and len(state["curriculum"]["samplers"]) == 3
    assert state["curriculum"]["samplers"][0]["draws"] >= 4  # stage 0 drew 2 x 2 prompts at least
