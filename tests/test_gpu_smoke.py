"""scripts/gpu_smoke.sh, the one-GPU smoke test, checked on CPU: its syntax, its dry run (toy
sizes, every check that needs no GPU), its exit code on a failed check, and that its built-in
sizes are the 7B preset's (the GPU machine may have no Hydra to compose them)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from rl_vlm.compose import compose
from rl_vlm.validation import engine_max_model_len

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--workdir", str(tmp_path), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results = json.loads((tmp_path / "results.json").read_text())
    return proc, results


def test_shell_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_passes_and_says_what_it_skipped(tmp_path: Path) -> None:
    proc, results = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r for r in results["rows"]}  # type: ignore[attr-defined]
    for check in ("model", "optimizer", "micro-batch T=64", "micro-batch T=128", "checkpoint"):
        assert rows[check]["status"] == "PASS", rows[check]
    assert rows["engine"]["status"] == "SKIP" and "dry run" in rows["engine"]["note"]
    assert rows["zero-3"]["status"] == "SKIP" and "--deepspeed on" in rows["zero-3"]["note"]
    assert "| check | status | value | note |" in proc.stdout
    assert results["failed"] is False


@pytest.mark.slow
def test_dry_run_with_deepspeed_and_the_engine(tmp_path: Path) -> None:
    """Every code path of the script at toy size on CPU: ZeRO-3 on one rank (gloo), its
    checkpoint, a vLLM CPU engine, the reload and the log-prob agreement (~1 min)."""
    proc, results = _run(tmp_path, "--deepspeed", "on", "--engine", "on")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r for r in results["rows"]}  # type: ignore[attr-defined]
    assert "DeepSpeed ZeRO-3" in rows["optimizer"]["note"]
    for check in ("checkpoint", "engine start", "engine = learner (loaded)", "engine = learner (reloaded)"):
        assert rows[check]["status"] == "PASS", rows[check]


def test_a_failed_check_exits_non_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    mod = _module()

    def failing(args: object) -> object:
        rep = mod.Report()
        rep.add("micro-batch T=4096", "FAIL", "", "OutOfMemoryError: CUDA out of memory")
        return rep

    monkeypatch.setattr(mod, "run", failing)
    assert mod.main(["--out", str(tmp_path)]) == 1
    assert "| micro-batch T=4096 | FAIL |" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["failed"] is True


def test_built_in_sizes_are_the_7b_presets() -> None:
    mod = _module()
    cfg = compose(["model=qwen2_5_vl_7b"])
    assert mod.PRESET_MICRO_BATCH == cfg.learner.micro_batch_size
    assert mod.PRESET_MAX_MODEL_LEN == engine_max_model_len(cfg)
    assert (mod.PRESET_MIN_PIXELS, mod.PRESET_MAX_PIXELS) == (cfg.model.min_pixels, cfg.model.max_pixels)
    full = mod.FULL
    assert full.hidden // full.heads == 2 * sum(full.mrope_section)  # head_dim 128, mrope 16+24+24
    assert (full.hidden, full.intermediate, full.vocab) == (3584, 18944, 152064)
