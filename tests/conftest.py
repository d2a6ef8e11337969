"""Shared fixtures: a tiny Qwen2.5-VL built once per test session (random weights, no warm start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Learner/rollout processes on a 2-core box: keep every process single-threaded by default.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built random-weight tiny Qwen2.5-VL (tokenizer + processor), loadable by path."""
    from rl_vlm.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)
