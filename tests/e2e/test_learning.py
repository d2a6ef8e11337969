"""GRPO learns through the real Ray + vLLM + DeepSpeed stack, from a fixed seed.

1. A rewarded behaviour: a user reward function loaded from a file (a well-formed response whose
   answer is `red`; this also exercises the ``file.py:fn`` reward path). Its held-out rate rises
   by >= 0.4 within 15 steps, with rollout one step ahead of the update
   (``trainer.max_staleness=1``, TIS).
2. The issue's learning test: held-out easy-VQA colour accuracy rises over the warm-started
   policy by >= 5 points in 40 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARGIN = 0.40

REWARD_FN = '''
import re

def says_red(response, row, **kwargs):
    m = re.fullmatch(r"\\s*<think>.*?</think>\\s*<answer>(.*?)</answer>\\s*", response, re.DOTALL)
    return 1.0 if m and m.group(1).strip().lower() == "red" else 0.0
'''


def test_grpo_raises_heldout_reward(warm_model_dir: Path, tmp_path: Path, shared_pools: SharedPools) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    convert_easy_vqa(tmp_path / "easy_vqa", max_train=2000, max_test=600)
    (tmp_path / "target.py").write_text(REWARD_FN)
    fn = f"{tmp_path / 'target.py'}:says_red"
    run_dir = tmp_path / "run"
    steps = 15
    cfg = compose([
        f"model.path={warm_model_dir}", f"data.train_files=[{tmp_path / 'easy_vqa' / 'train_color.jsonl'}]",
        f"data.val_files=[{tmp_path / 'easy_vqa' / 'test_color.jsonl'}]", "data.val_size=64", "trainer.val_every=5",
        f"reward.functions=[{{name: '{fn}', weight: 1.0}}]", f"reward.accuracy_key={fn}",
        # Measured curve in the README ("Learning"). At lr 1e-3 one early update once broke the
        # format (responses ran to the token limit), every reward became 0 and GRPO had no
        # signal left: a sparse reward needs a gentler step.
        "learner.lr=5e-4", f"trainer.total_steps={steps}",
        # Rollout one step ahead of the update with truncated IS: asynchronous training learns
        # too (the synchronous run is the easy-VQA test below; parity curves in the README).
        "trainer.max_staleness=1", "algorithm.rollout_correction.mode=tis",
        f"trainer.output_dir={run_dir}", "trainer.progress_bar=false",
    ])
    train(cfg, pools=shared_pools)
    metrics = read_metrics(str(run_dir))
    val = {r["step"]: r["val/reward"] for r in metrics if "val/reward" in r}
    print(f"held-out reward: {val}")
    assert [r["rollout/staleness_max"] for r in metrics if r["step"] > 0] == [0.0] + [1.0] * (steps - 1)
    assert val[steps] - val[0] >= MARGIN, val


# On all 1,280 held-out colour questions a difference of two accuracies has a standard error of
# ~0.014: 5 points is ~3.5 of them (measured curve in the README, "Learning"). Every machine
# trains the same shipped model file (rl_vlm/models/assets), so the margin is the model's; the
# RL steps' float kernels still differ by CPU type, which the margin has to absorb.
ACCURACY_MARGIN = 0.05


def test_grpo_raises_heldout_easy_vqa_accuracy(warm_model_dir: Path, tmp_path: Path, shared_pools: SharedPools) -> None:
    """The issue's learning test: held-out easy-VQA colour accuracy (greedy, all 1,280 test
    colour questions) rises over the warm-started policy by at least ACCURACY_MARGIN in 40 GRPO
    steps (``experiment=grpo_easy_vqa_learning``)."""
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    data = tmp_path / "easy_vqa"
    convert_easy_vqa(data)
    run_dir = tmp_path / "run"
    cfg = compose([
        "experiment=grpo_easy_vqa_learning", f"model.path={warm_model_dir}",
        f"data.train_files=[{data / 'train_color.jsonl'}]", f"data.val_files=[{data / 'test_color.jsonl'}]",
        f"trainer.output_dir={run_dir}", "trainer.progress_bar=false",
    ])
    train(cfg, pools=shared_pools)
    val = {r["step"]: r["val/accuracy"] for r in read_metrics(str(run_dir)) if "val/accuracy" in r}
    print(f"held-out colour accuracy: {val}")
    assert val[cfg.trainer.total_steps] - val[0] >= ACCURACY_MARGIN, val
