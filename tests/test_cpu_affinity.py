"""``cluster.rollout_cpu_affinity`` / ``cluster.learner_cpu_affinity`` from the command line to
:func:`rl_vlm.validation.check_cpu_affinity` (what the actors do with them:
tests/workers/test_cpu_pinning.py)."""

from __future__ import annotations

import os

import pytest

from rl_vlm.compose import compose
from rl_vlm.config import ConfigError
from rl_vlm.validation import check_cpu_affinity, validate

USABLE = sorted(os.sched_getaffinity(0))


def test_affinity_keys_default_to_unpinned_and_parse_as_int_tuples() -> None:
    cfg = compose([])
    assert cfg.cluster.rollout_cpu_affinity == cfg.cluster.learner_cpu_affinity == ()
    cfg = compose(["cluster.rollout_cpu_affinity=[0]", "cluster.learner_cpu_affinity=[1,0]"])
    assert cfg.cluster.rollout_cpu_affinity == (0,) and cfg.cluster.learner_cpu_affinity == (1, 0)
    with pytest.raises(ConfigError, match="cluster.rollout_cpu_affinity"):
        compose(["cluster.rollout_cpu_affinity=[zero]"])


def test_usable_cpus_validate() -> None:
    cfg = compose(["cluster.device=cpu", f"cluster.rollout_cpu_affinity=[{USABLE[0]}]",
                   f"cluster.learner_cpu_affinity=[{USABLE[-1]}]"])
    assert validate(cfg, check_paths=False) is cfg
    check_cpu_affinity(cfg)


@pytest.mark.parametrize("pool", ["rollout", "learner"])
@pytest.mark.parametrize("ids,match", [("[-1]", ">= 0"), ("[0,0]", "twice")])
def test_bad_ids_are_named(pool: str, ids: str, match: str) -> None:
    cfg = compose(["cluster.device=cpu", f"cluster.{pool}_cpu_affinity={ids}"])
    with pytest.raises(ConfigError, match=f"cluster.{pool}_cpu_affinity: .*{match}"):
        validate(cfg, check_paths=False)


@pytest.mark.parametrize("pool", ["rollout", "learner"])
def test_a_cpu_this_machine_lacks_is_named(pool: str) -> None:
    absent = (os.cpu_count() or 1) + 7
    cfg = compose(["cluster.device=cpu", f"cluster.{pool}_cpu_affinity=[{USABLE[0]},{absent}]"])
    with pytest.raises(ConfigError, match=rf"cluster.{pool}_cpu_affinity: CPU\(s\) \[{absent}\] do not exist"):
        check_cpu_affinity(cfg)
    # A config written for another machine or a joined cluster: only the machine-free checks.
    check_cpu_affinity(cfg, this_machine=False)
    check_cpu_affinity(compose(["cluster.device=cpu", "cluster.address=auto",
                                f"cluster.{pool}_cpu_affinity=[{absent}]"]))


def test_affinity_is_refused_on_gpu() -> None:
    cfg = compose(["cluster.device=gpu", "cluster.learner_cpu_affinity=[0]"])
    with pytest.raises(ConfigError, match="cluster.learner_cpu_affinity: .*empty on GPU"):
        check_cpu_affinity(cfg, this_machine=False)
    check_cpu_affinity(compose(["cluster.device=gpu"]))  # unpinned: nothing to check
