"""Shared fixtures: the tiny Qwen2.5-VL, random-init (built once per session) and warm-started (shipped), the
real-shape model, and one running system for the end-to-end runs."""

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


@pytest.fixture(scope="session")
def warm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped warm-started tiny model (what `rl-vlm setup-cpu-demo` copies into artifacts/):
    it follows the answer format but is far from perfect, so GRPO has a learning signal. Shipped,
    not built here, because a warm start's result depends on the CPU type."""
    from rl_vlm.models.tiny import install_shipped

    out = tmp_path_factory.mktemp("warm-model") / "tiny-qwen2.5-vl"
    install_shipped(out)
    return out


@pytest.fixture(scope="session")
def real_shape_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built random-weight real-shape Qwen2.5-VL (seed 0: the pinned build), loadable by
    path: 151,936-token vocabulary, Qwen2.5's token ids, real vision geometry, narrow towers."""
    from rl_vlm.models.real_shape import build_real_shape_model

    return build_real_shape_model(tmp_path_factory.mktemp("real-shape-model"), seed=0)


@pytest.fixture(scope="session")
def shared_pools():  # -> rl_vlm.distributed.provider.SharedPools
    """One running system for the in-process end-to-end runs that can share it: the actors are
    re-pointed at each run's config instead of paying a system start (process starts, ``import
    vllm``, engine start-up) per run. A run that needs its own Ray instance closes it first."""
    from rl_vlm.distributed.provider import SharedPools

    pools = SharedPools()
    yield pools
    pools.close()
