"""Shared fixtures: the tiny Qwen2.5-VL, random-init (built once per session) and warm-started (shipped), the
real-shape model, and one running system for the end-to-end runs; and how the two xdist workers
split the suite (:func:`pytest_collection_modifyitems`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Learner/rollout processes on a 2-core box: keep every process single-threaded by default.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Each xdist worker has one shared running system (``shared_pools``); a system start costs
# 50-100 s on 2 cores, and on 2 cores the suite is CPU-bound, so its time is its CPU work. The
# end-to-end files that share a system are two groups, one per worker, each in an order where a
# system starts only where one is needed anyway: warm-a's first run (the uninterrupted reference
# of kill-and-resume) starts it, the killed run is its own process, the real-shape model needs
# its own system; warm-b's first run starts fresh actors on purpose, and the colocated layout
# needs its own, so it goes last. The two-node test
# (its own Ray cluster) ends warm-a: by then the other worker runs light unit tests, and a
# raylet started beside a system start can miss Ray's fixed 30 s registration limit. Then the
# GPU smoke's dry runs (their own processes), then every other file as a unit.
_GROUPS = {
    "warm-a": ("e2e/test_checkpoint_e2e.py", "e2e/test_real_shape_e2e.py", "e2e/test_multinode.py"),
    "warm-b": ("e2e/test_train_e2e.py", "e2e/test_algorithms_e2e.py", "e2e/test_curriculum_e2e.py",
               "e2e/test_eval.py", "e2e/test_learning.py", "test_benchmarks_smoke.py", "e2e/test_sweep.py",
               "e2e/test_colocate_lora_e2e.py"),
}
_OWN_SYSTEM = ("test_gpu_smoke.py",)
_ORDER = [f for files in _GROUPS.values() for f in files] + list(_OWN_SYSTEM)
_GROUP_OF = {f"tests/{f}": g for g, files in _GROUPS.items() for f in files}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files listed above first, in that order (the xdist workers take the units of work
    in collection order: ``--no-loadscope-reorder`` in pyproject)."""
    tests = Path(__file__).parent
    rank: dict[pytest.Item, int] = {}
    for item in items:
        rel = item.path.relative_to(tests).as_posix()
        rank[item] = _ORDER.index(rel) if rel in _ORDER else len(_ORDER)
    items.sort(key=rank.__getitem__)  # stable: a file's own order is kept


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile`` with the groups above: a file is a unit of work (module fixtures stay
    shared), except that each group is one unit, so its files run on one worker and share its
    system. (Not ``--dist loadgroup``: xdist 3.8 marks a group by editing the test's node id,
    which pytest 9.2 no longer takes, pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class GroupedFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return _GROUP_OF.get(file, file)

    return GroupedFiles(config, log)


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
