"""Shared fixtures: a tiny Qwen2.5-VL built once per test session (random weights, no warm start)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Learner/rollout processes on a 2-core box: keep every process single-threaded by default.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built random-weight tiny Qwen2.5-VL (tokenizer + processor), loadable by path."""
    from rl_vlm.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def warm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after the default supervised warm start (what `rl-vlm setup-cpu-demo` builds):
    it follows the answer format but is far from perfect, so GRPO has a learning signal."""
    from rl_vlm.models.tiny import build_and_warm_start, is_current

    out = tmp_path_factory.mktemp("warm-model")
    # `scripts/setup.sh` built this very model into artifacts/ (same seed, steps, code and
    # libraries, single-threaded warm start): reuse it rather than spend minutes rebuilding.
    built = Path(__file__).resolve().parents[1] / "artifacts" / "tiny-qwen2.5-vl"
    if is_current(built, seed=0):
        shutil.copytree(built, out, dirs_exist_ok=True)
        return out
    return build_and_warm_start(out, seed=0)
