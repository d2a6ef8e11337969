"""Fixtures of the model builders' tests: the real-shape Qwen2.5-VL, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_shape_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built random-weight real-shape Qwen2.5-VL (seed 0: the pinned build), loadable by
    path: 151,936-token vocabulary, Qwen2.5's token ids, real vision geometry, narrow towers."""
    from rl_vlm.models.real_shape import build_real_shape_model

    return build_real_shape_model(tmp_path_factory.mktemp("real-shape-model"), seed=0)
