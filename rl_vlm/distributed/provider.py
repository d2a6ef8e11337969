"""Where a run's pools come from (:class:`~rl_vlm.distributed.interfaces.PoolProvider`).

:class:`FreshPools` is what ``rl-vlm train`` uses: a private Ray instance (or the cluster of
``cluster.address``) and new actors for every run, all shut down when it ends.

:class:`SharedPools` keeps Ray and the actors alive between the runs of one process and re-points
them at each run's config where that is sound: the learner ranks rebuild their DeepSpeed engines
from the new config in their own processes (same world size), the engines keep their vLLM state
and load the new run's initial weights. A run then costs what it computes, not a system start
(process starts, ``import vllm``, engine start-up): the end-to-end tests share one this way.
Anything that would make re-pointing unsound starts fresh actors instead: another pool layout or
engine setting, a model whose files other than the weights differ (:func:`model_files_key`), a
collective weight sync (its process group is bound to the actors), or a failed run whose
engines do not all answer or are colocated with the ranks. After a failed run whose engines do
(a dead learner rank) only the ranks are replaced (:meth:`SharedPools.release`).
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rl_vlm.distributed.interfaces import Pools
from rl_vlm.distributed.runtime import (
    PoolLayout,
    create_placement_group,
    local_cpus,
    pool_layout,
    start_ray,
)
from rl_vlm.distributed.sync.plan import resolve_weight_sync
from rl_vlm.validation import engine_max_model_len, model_max_length, resolve_device

if TYPE_CHECKING:
    from rl_vlm.config import Config
    from rl_vlm.distributed.pools import LearnerGroup, RolloutGroup

log = logging.getLogger("rl_vlm.distributed")


def _start(cfg: Config, with_learners: bool,
           max_model_len: int | None = None) -> tuple[RolloutGroup, LearnerGroup | None]:
    from rl_vlm.distributed.pools import RolloutGroup

    device = resolve_device(cfg.cluster.device)
    layout = pool_layout(cfg.cluster, cfg.rollout, cfg.learner, device)
    start_ray(cfg, layout)
    # Colocated pools: one placement group, engine k and learner rank k in its bundle k.
    pg = create_placement_group(layout.learner_bundles, "rl_vlm_colocated") if layout.colocate else None
    rollout = RolloutGroup(cfg, layout, device, max_model_len, pg=pg)
    if layout.colocate:
        # vLLM sizes its pool from the device's free memory at start-up: a learner loading its
        # model onto the same GPU meanwhile would make that measurement wrong.
        rollout.call("pid")
    learners = _start_learners(cfg, layout, device, rollout, pg) if with_learners else None
    return rollout, learners


def _start_learners(cfg: Config, layout: PoolLayout, device: str, rollout: RolloutGroup,
                    pg: object = None) -> LearnerGroup:
    from rl_vlm.distributed.pools import LearnerGroup
    from rl_vlm.distributed.sync.collective import connect_weight_sync

    learners = LearnerGroup(cfg, layout, device, pg=pg)
    connect_weight_sync(rollout, learners, device)
    return learners


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


_LIVE: weakref.WeakSet[SharedPools] = weakref.WeakSet()

SHARED_ENGINE_LEN = 2048
"""The least ``max_model_len`` of a shared system's engines (capped at the model's own limit)."""


def shared_engine_len(cfg: Config) -> int:
    """``max_model_len`` of the engines a :class:`SharedPools` starts for ``cfg``: the run's own
    length, or :data:`SHARED_ENGINE_LEN` if longer (within the model's limit), so that the runs
    that follow with other prompt or answer lengths are served by the same engines. A request's
    tokens do not depend on the engine's limit (tests/e2e/test_checkpoint_e2e.py compares a run
    on a shared system with one on its own)."""
    limit = model_max_length(cfg.model.path) or SHARED_ENGINE_LEN
    return max(engine_max_model_len(cfg), min(SHARED_ENGINE_LEN, limit))


def close_shared_pools() -> None:
    """Stop every :class:`SharedPools` of this process: a run with its own Ray instance (or code
    that calls ``ray.init`` itself) must not find their actors holding the cores."""
    for shared in list(_LIVE):
        shared.close()


class FreshPools:
    """New pools for every run, on a Ray instance that is shut down with them."""

    def acquire(self, cfg: Config, with_learners: bool) -> Pools:
        close_shared_pools()
        rollout, learners = _start(cfg, with_learners)
        return Pools(rollout, learners)

    def release(self, failed: bool) -> None:
        _shutdown_ray()


@dataclass(frozen=True)
class _RayKey:
    """What the Ray instance itself was started with."""

    address: str
    num_cpus: int
    kv_cache_gib: float
    log_to_driver: bool


@dataclass(frozen=True)
class _EngineKey:
    """Everything a vLLM engine is constructed with, apart from its seed (every request carries
    its own) and the weights (loaded at acquire)."""

    layout: tuple[object, ...]
    device: str
    model_files: str
    """``model.path``'s files other than the weights (:func:`model_files_key`)."""
    dtype: str
    enforce_eager: bool | None
    gpu_memory_utilization: float
    tensor_parallel_size: int
    torch_threads: int
    cpu_affinity: tuple[int, ...]
    """``cluster.rollout_cpu_affinity``: applied once, at actor start."""
    lora: tuple[int, bool]
    """vLLM's ``max_lora_rank`` (0 = no LoRA) and tower LoRA: the engine's LoRA slots."""
    sleep_level: int


@dataclass(frozen=True)
class _LearnerKey:
    """What the ranks' processes are bound to (the process group and the bundles)."""

    layout: tuple[object, ...]
    device: str
    num_ranks: int
    cpu_affinity: tuple[int, ...]
    """``cluster.learner_cpu_affinity``: applied once, at actor start."""


_NOT_READ_BY_ENGINE = ("build_info.json", "SHA256SUMS", "README.md")
"""Provenance files in a model directory: no engine reads them."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".safetensors.index.json", ".bin.index.json")


def model_side_files(root: Path) -> list[Path]:
    """The files of model directory ``root`` besides its weights and provenance (config,
    generation config, tokenizer, processor, chat template, and any file this list does not
    know), sorted: what an engine built from ``root`` depends on apart from the weights."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and p.relative_to(root).as_posix() not in _NOT_READ_BY_ENGINE
                  and not p.name.endswith(_WEIGHT_SUFFIXES))


def model_files_key(path: str) -> str:
    """A digest of ``path``'s :func:`model_side_files`, or ``path`` itself where it is not a local
    directory. Two model directories with the same key give the same engine once it holds the
    run's weights, which SharedPools loads at acquire from the learners (who load ``path``)."""
    root = Path(path)
    if not root.is_dir():
        return path
    digest = hashlib.sha256()
    for f in model_side_files(root):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def _lora_key(cfg: Config) -> tuple[int, bool]:
    from rl_vlm.models.lora import engine_max_lora_rank

    lora = cfg.model.lora
    return (engine_max_lora_rank(lora.rank), lora.vision_tower) if lora.rank else (0, False)


def _layout_key(layout: PoolLayout, pool: str) -> tuple[object, ...]:
    bundles = layout.rollout_bundles if pool == "rollout" else layout.learner_bundles
    return (layout.colocate, *(tuple(sorted(b.items())) for b in bundles))


class SharedPools:
    """Pools kept between the runs of one process and re-pointed at each run (module docstring).
    Call :meth:`close` when done with it."""

    def __init__(self) -> None:
        self._ray: _RayKey | None = None
        self._rollout: RolloutGroup | None = None
        self._learners: LearnerGroup | None = None
        self._engine_key: _EngineKey | None = None
        self._learner_key: _LearnerKey | None = None
        self._reusable = False
        self._colocated = False
        self.reused = 0
        """Runs served by re-pointed actors (for tests and logs)."""
        self.learner_restarts = 0
        """Runs that got new learner ranks beside the running engines after a failed run."""
        _LIVE.add(self)

    def acquire(self, cfg: Config, with_learners: bool) -> Pools:
        device = resolve_device(cfg.cluster.device)
        layout = pool_layout(cfg.cluster, cfg.rollout, cfg.learner, device)
        cpus = local_cpus(cfg, layout)
        ray_key = _RayKey(cfg.cluster.address, cpus, cfg.rollout.kv_cache_gib, cfg.cluster.log_to_driver)
        r = cfg.rollout
        engine_key = _EngineKey(_layout_key(layout, "rollout"), device, model_files_key(cfg.model.path), r.dtype,
                                r.enforce_eager, r.gpu_memory_utilization, r.tensor_parallel_size, r.torch_threads,
                                cfg.cluster.rollout_cpu_affinity, _lora_key(cfg), r.sleep_level)
        needed = engine_max_model_len(cfg)
        learner_key = _LearnerKey(_layout_key(layout, "learner"), device, cfg.learner.num_ranks,
                                  cfg.cluster.learner_cpu_affinity)
        collective = resolve_weight_sync(cfg.cluster.weight_sync, device, cfg.cluster.colocate,
                                         bool(cfg.model.lora.rank)) == "collective"
        reuse = (self._reusable and not collective and ray_key == self._ray and engine_key == self._engine_key
                 and learner_key == self._learner_key and self._rollout is not None
                 and self._rollout.max_model_len >= needed and _ray_running())
        if not reuse:
            self.close()
            # Always with learners: re-pointed engines get each run's start weights from them,
            # evaluation-only runs included (model.path's weights, published by the learners).
            self._rollout, self._learners = _start(cfg, with_learners=True, max_model_len=shared_engine_len(cfg))
            self._ray, self._engine_key, self._learner_key = ray_key, engine_key, learner_key
            self._reusable, self._colocated = not collective, layout.colocate
        else:
            assert self._rollout is not None
            self._rollout.reconfigure(cfg)
            if self._learners is None:  # the last run failed: its ranks were stopped (release)
                self._learners = _start_learners(cfg, layout, device, self._rollout)
                self.learner_restarts += 1
                log.info("started new learner ranks beside the running engines")
            else:
                self._learners.reconfigure(cfg)
            # The engines still hold the previous run's weights: give them this run's start.
            self._rollout.load_weights(self._learners.publish_weights(), 0)
            self.reused += 1
            log.info("re-pointed the running pools at %s (%d re-pointed runs)", cfg.trainer.output_dir, self.reused)
        return Pools(self._rollout, self._learners if with_learners else None)

    def release(self, failed: bool) -> None:
        """After a failed run (a dead learner rank, usually: the others would hang in the next
        collective) the ranks are stopped, but Ray and the engines keep running if every engine
        answers (a dead one is restarted by its pool) and they are not colocated with the ranks:
        the restarted run then pays the ranks' start, not the engines' (minutes at 7B on a GPU).
        Anything else closes everything."""
        if not failed:
            return
        if self._rollout is None or self._learners is None or not self._reusable or self._colocated:
            self.close()
            return
        try:
            self._rollout.call("pid")
            self._learners.stop()
        except Exception as e:  # noqa: BLE001 - a system in an unknown state starts over
            log.warning("closing the pools after a failed run: %s", e)
            self.close()
            return
        self._learners = None

    def actor_pids(self) -> dict[str, list[int]]:
        """Process ids of the running engines and learner ranks, by pool (empty when nothing
        runs): what a fault-injection test kills."""
        import ray

        pools = {"rollout": self._rollout, "learner": self._learners}
        return {name: ray.get([a.pid.remote() for a in pool.actors]) if pool is not None else []
                for name, pool in pools.items()}

    def close(self) -> None:
        """Stop every actor and the Ray instance (if this provider started any)."""
        if self._ray is None:
            return
        self._rollout = self._learners = None
        self._ray = self._engine_key = self._learner_key = None
        self._reusable = False
        _shutdown_ray()
