"""The run log on resume: metrics.jsonl keeps one record per step, wandb continues the same run."""

from __future__ import annotations

import json
from pathlib import Path

from rl_vlm.config import TrainerConfig
from rl_vlm.driver.tracking import Tracker, read_metrics


def test_resume_truncates_metrics_and_reuses_the_wandb_run(tmp_path: Path) -> None:
    cfg = TrainerConfig(progress_bar=False, wandb_mode="offline", output_dir=str(tmp_path))
    t = Tracker(cfg, str(tmp_path), {}, total_steps=4)
    for step in range(4):
        t.log(step, {"reward/mean": float(step)})
    t.close()
    first_id = (tmp_path / "wandb_run_id").read_text()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward/me')  # a record torn by a crash

    t = Tracker(cfg, str(tmp_path), {}, total_steps=4, start_step=2)  # resumed from step 2
    t.log(3, {"reward/mean": 30.0})
    t.close()
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(str(tmp_path))] == [(0, 0.0), (1, 1.0), (2, 2.0),
                                                                                   (3, 30.0)]
    assert (tmp_path / "wandb_run_id").read_text() == first_id
    # Two offline runs of one id; wandb suffixes the second dir ("-1") when both start in one second.
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(first_id in r.split("-", 3)[-1] for r in runs), runs
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
