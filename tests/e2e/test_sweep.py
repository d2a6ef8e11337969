"""A real sweep through the command line's entry point: ``rl-vlm train -m
algorithm=grpo,dr_grpo`` on the tiny model (Ray + vLLM + DeepSpeed, 1 step per run). Two runs,
not a 2 x 2 grid: the grid product is Hydra's; what is ours (a directory, config, seed and
metrics per run, the summary) shows with two. It runs in this process (``main(argv, pools)``)
on the suite's shared running system, which both runs re-point, as a sweep's runs re-point its
own (tests/e2e/test_train_e2e.py shows a re-pointed run is the fresh one).

Asserts what a user relies on: the runs one after another, each in its own directory with its
own resolved config (the swept values, the seed rule) and metrics, and a summary ranking them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from rl_vlm.distributed.provider import SharedPools

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sweep_of_two_runs(tiny_model_dir: Path, tmp_path: Path, shared_pools: SharedPools,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from rl_vlm.cli import main
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path / "data", max_train=16, max_test=4)
    sweep = tmp_path / "sweep"
    argv = ["train", "-m",
            "algorithm=grpo,dr_grpo", "learner.lr=3e-4",
            f"model.path={tiny_model_dir}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
            "data.rollout_batch_size=2", "data.val_size=4", "rollout.n=2", "rollout.max_new_tokens=16",
            "learner.num_ranks=2", "learner.mini_batch_size=2", "learner.micro_batch_size=2",
            "trainer.total_steps=1", "trainer.val_every=1", "trainer.progress_bar=false",
            "trainer.seed=3", "trainer.seed_per_run=true", f"hydra.sweep.dir={sweep}"]
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)  # the sweep sets it for its runs; undone after
    reused = shared_pools.reused
    assert main(argv, pools=shared_pools) == 0
    assert shared_pools.reused >= reused + 1  # the second run at least re-pointed the system

    expected = [("grpo", True, 3e-4), ("dr_grpo", False, 3e-4)]
    for job, (_, norm, lr) in enumerate(expected):
        run = sweep / str(job)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["trainer"]["output_dir"] == str(run)
        assert cfg["trainer"]["seed"] == 3 + job
        assert cfg["algorithm"]["norm_adv_by_std"] is norm and cfg["learner"]["lr"] == pytest.approx(lr)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1] and "val/accuracy" in records[-1]
        assert json.loads((run / "sweep_run.json").read_text())["status"] == "ok"

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(int(r["job"]) for r in rows) == [0, 1]
    assert [int(r["rank"]) for r in rows] == [1, 2]
    finals = [float(r["final val/accuracy"]) for r in rows]
    assert finals == sorted(finals, reverse=True)
    assert {r["overrides"] for r in rows} == {f"algorithm={a}" for a in ("grpo", "dr_grpo")}
    assert (sweep / "summary.md").read_text().startswith("| rank | job | overrides |")
