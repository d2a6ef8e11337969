"""Sweep rules and summary (rl_vlm.driver.sweep) on fake run directories; the Hydra multirun wiring of
``rl-vlm train -m`` with training replaced by a stub (the real sweep is tests/e2e/test_sweep.py)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from rl_vlm.driver.sweep import run_settings, summarize, write_run_record, write_summary


def _fake_run(sweep: Path, job: int, overrides: list[str], vals: list[float | None], status: str = "ok") -> None:
    run = sweep / str(job)
    write_run_record(str(run), job, overrides, 1 + job, status)
    with open(run / "metrics.jsonl", "w") as f:
        for step, v in enumerate(vals):
            rec = {"step": step, "reward/mean": 0.5}
            if v is not None:
                rec["val/accuracy"] = v
            f.write(json.dumps(rec) + "\n")


def test_run_settings_seed_rule_dirs_and_group() -> None:
    rs = run_settings("multirun/2026-01-01_10-00-00", 3, ["learner.lr=1e-6"], base_seed=7, seed_per_run=False)
    assert rs.output_dir == "multirun/2026-01-01_10-00-00/3" and rs.seed == 7
    assert rs.wandb_group == "2026-01-01_10-00-00" and rs.wandb_run_name == "learner.lr=1e-6"
    assert run_settings("s/", 3, [], 7, seed_per_run=True).seed == 10
    assert run_settings("s", 0, [], 7, False, wandb_run_name="mine").wandb_run_name == "mine"


def test_summary_ranks_by_final_value_and_writes_csv_and_markdown(tmp_path: Path) -> None:
    _fake_run(tmp_path, 0, ["algorithm=grpo", "learner.lr=1e-6"], [0.40, 0.50, None, 0.45])
    _fake_run(tmp_path, 1, ["algorithm=grpo", "learner.lr=3e-6"], [0.40, 0.70])
    _fake_run(tmp_path, 2, ["algorithm=dr_grpo", "learner.lr=1e-6"], [], status="failed")
    _fake_run(tmp_path, 3, ["algorithm=dr_grpo", "learner.lr=3e-6"], [0.40, 0.45])  # ties job 0 on final
    (tmp_path / "3" / "metrics.jsonl").open("a").write('{"step": 9, "val/acc')  # killed mid-write
    (tmp_path / ".hydra").mkdir()  # Hydra's own files next to the runs are ignored
    (tmp_path / "multirun.yaml").write_text("x: 1\n")

    runs = summarize(str(tmp_path), "val/accuracy", "max")
    assert [r.job for r in runs] == [1, 0, 3, 2]
    assert [r.rank for r in runs] == [1, 2, 3, 4]
    top = runs[0]
    assert (top.final, top.final_step, top.best, top.best_step, top.seed) == (0.70, 1, 0.70, 1, 2)
    assert (runs[1].final, runs[1].final_step, runs[1].best, runs[1].best_step) == (0.45, 3, 0.50, 1)
    assert runs[3].status == "failed" and runs[3].final is None

    low = summarize(str(tmp_path), "val/accuracy", "min")
    assert [r.job for r in low] == [0, 3, 1, 2] and low[0].best == 0.40

    csv_path, md_path = write_summary(runs, str(tmp_path), "val/accuracy")
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["job"] for r in rows] == ["1", "0", "3", "2"]
    assert rows[0]["overrides"] == "algorithm=grpo learner.lr=3e-6" and rows[0]["final val/accuracy"] == "0.7"
    md = Path(md_path).read_text().splitlines()
    assert md[0].startswith("| rank | job | overrides |") and md[1].startswith("|---|")
    assert len(md) == 2 + 4 and "| 1 | 1 | algorithm=grpo learner.lr=3e-6 |" in md[2]


def test_summary_of_another_metric_and_bad_mode(tmp_path: Path) -> None:
    _fake_run(tmp_path, 0, [], [0.1])
    assert summarize(str(tmp_path), "reward/mean")[0].final == 0.5
    with pytest.raises(ValueError):
        summarize(str(tmp_path), mode="best")


def test_sweep_summary_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rl_vlm.cli import main

    _fake_run(tmp_path, 0, ["learner.lr=1e-6"], [0.2])
    _fake_run(tmp_path, 1, ["learner.lr=3e-6"], [0.3])
    assert main(["sweep-summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 | learner.lr=3e-6 | 0.3 | ok |" in out
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "summary.md").exists()


def test_multirun_dispatch_with_stub_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rl-vlm train -m``: 2 x 2 runs through Hydra's launcher, each with its own directory, the
    seed rule, the wandb group/name, and a failing run recorded without ending the sweep."""
    import rl_vlm.cli as cli

    seen = []

    def fake_training(cfg, pools):  # what train() would leave behind: metrics.jsonl in output_dir
        seen.append((cfg.trainer.output_dir, cfg.trainer.seed, cfg.algorithm.norm_adv_by_std, cfg.learner.lr,
                     cfg.trainer.wandb_run_name, os.environ.get("WANDB_RUN_GROUP"), pools))
        if cfg.learner.lr == 2e-6 and not cfg.algorithm.norm_adv_by_std:
            raise RuntimeError("boom")
        os.makedirs(cfg.trainer.output_dir, exist_ok=True)
        with open(os.path.join(cfg.trainer.output_dir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 1, "val/accuracy": cfg.learner.lr * 1e6}) + "\n")
        return None

    monkeypatch.setattr(cli, "_run_training", fake_training)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    sweep = tmp_path / "sw"
    rc = cli.main(["train", "-m", "algorithm=grpo,dr_grpo", "learner.lr=1e-6,2e-6", "trainer.seed=5",
                   "trainer.seed_per_run=true", f"hydra.sweep.dir={sweep}"])
    assert rc == 1  # one run failed
    assert [s[0] for s in seen] == [str(sweep / str(j)) for j in range(4)]
    assert [s[1] for s in seen] == [5, 6, 7, 8]
    assert [(s[2], s[3]) for s in seen] == [(True, 1e-6), (True, 2e-6), (False, 1e-6), (False, 2e-6)]
    assert seen[0][4] == "algorithm=grpo,learner.lr=1e-06" and {s[5] for s in seen} == {"sw"}
    # The runs of one sweep share one running system (re-pointed per run, see SharedPools).
    assert len({id(s[6]) for s in seen}) == 1 and type(seen[0][6]).__name__ == "SharedPools"
    runs = summarize(str(sweep))
    assert [(r.job, r.status) for r in runs] == [(1, "ok"), (0, "ok"), (2, "ok"), (3, "failed")]
    assert "boom" in json.loads((sweep / "3" / "sweep_run.json").read_text())["error"]
    assert (sweep / "summary.md").exists()


def test_a_running_system_passed_in_serves_every_run_and_stays_running(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``main(argv, pools)``: a single run and each run of a sweep get the caller's pools, which
    are not closed at the end (the caller owns them)."""
    import rl_vlm.cli as cli

    class Caller:  # what the runs get; a SharedPools has close() too
        closed = False

        def close(self) -> None:
            self.closed = True

    seen = []

    def fake_training(cfg, pools):
        seen.append(pools)
        os.makedirs(cfg.trainer.output_dir, exist_ok=True)
        Path(cfg.trainer.output_dir, "metrics.jsonl").write_text(json.dumps({"step": 1, "val/accuracy": 0.5}) + "\n")
        return 0.5

    monkeypatch.setattr(cli, "_run_training", fake_training)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    mine = Caller()
    assert cli.main(["train", "-m", "learner.lr=1e-6,2e-6", f"hydra.sweep.dir={tmp_path / 'sw'}"], pools=mine) == 0
    assert cli.main(["train", f"trainer.output_dir={tmp_path / 'one'}"], pools=mine) == 0
    assert seen == [mine, mine, mine] and not mine.closed


def test_swept_keys_from_the_command_line() -> None:
    from rl_vlm.driver.sweep import swept_keys, varying

    argv = ["-m", "algorithm=grpo,dr_grpo", "learner.lr=1e-6,3e-6", "trainer.seed=5", "data.train_files=[a,b]",
            "+x.y=range(1,3)", "reward.functions=[{name: a, weight: 1}]", "s='a,b'", "hydra.sweep.dir=out"]
    assert swept_keys(argv) == {"algorithm", "learner.lr", "x.y"}
    assert varying(["algorithm=grpo", "learner.lr=1e-06", "trainer.seed=5"], swept_keys(argv)) == [
        "algorithm=grpo", "learner.lr=1e-06"]
