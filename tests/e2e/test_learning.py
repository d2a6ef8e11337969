"""GRPO learns through the real Ray + vLLM + DeepSpeed stack: from a fixed seed, the held-out
reward of a rewarded behaviour rises far above the starting policy's within a few steps.

The target is a user reward function loaded from a file ("a well-formed response whose answer
is `red`"), which also exercises
the ``file.py:fn`` reward path. The starting policy answers `red` only where it believes the
shape is red (~10% of colour questions); the test asserts the held-out rate rises by >= 0.4.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.controller import train
from rl_vlm.tracking import read_metrics

pytestmark = pytest.mark.e2e

MARGIN = 0.40

REWARD_FN = '''
import re

def says_red(response, row, **kwargs):
    m = re.fullmatch(r"\\s*<think>.*?</think>\\s*<answer>(.*?)</answer>\\s*", response, re.DOTALL)
    return 1.0 if m and m.group(1).strip().lower() == "red" else 0.0
'''


def test_grpo_raises_heldout_reward(warm_model_dir: Path, tmp_path: Path) -> None:
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
        "learner.lr=1e-3", f"trainer.total_steps={steps}",
        f"trainer.output_dir={run_dir}", "trainer.progress_bar=false",
    ])
    train(cfg)
    val = {r["step"]: r["val/reward"] for r in read_metrics(str(run_dir)) if "val/reward" in r}
    print(f"held-out reward: {val}")
    assert val[steps] - val[0] >= MARGIN, val
