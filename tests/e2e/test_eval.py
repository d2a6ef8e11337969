"""`rl-vlm eval`: a rollout pool alone scores a checkpoint with pass@k on held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import evaluate
from rl_vlm.driver.evaluation import pass_at_k

pytestmark = pytest.mark.e2e


def test_pass_at_k_estimator() -> None:
    # n=4 samples, c=1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6, pass@4 = 1.
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0


def test_eval_reports_pass_at_k(warm_model_dir: Path, tmp_path: Path, shared_pools: SharedPools) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    _, test = convert_easy_vqa(tmp_path / "d", max_train=8, max_test=200)
    cfg = compose([f"model.path={warm_model_dir}", f"data.train_files=[{test}]",
                   f"data.val_files=[{test.with_name('test_color.jsonl')}]", "data.val_size=16",
                   "rollout.val_n=4", "rollout.val_temperature=1.0", f"trainer.output_dir={tmp_path / 'eval'}"])
    m = evaluate(cfg, pools=shared_pools)
    assert 0.0 <= m["val/accuracy"] <= m["val/pass@2"] <= m["val/pass@3"] <= m["val/pass@4"] <= 1.0
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["val/pass@4"] == m["val/pass@4"] and written["model"] == str(warm_model_dir)
