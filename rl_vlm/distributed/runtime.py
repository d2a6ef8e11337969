"""Ray start-up and the placement groups of the two pools: which bundles each pool gets and
how an actor is pinned to one."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from rl_vlm.config import (
    ClusterConfig,
    Config,
    ConfigError,
    LearnerConfig,
    RolloutConfig,
)
from rl_vlm.distributed.placement import GpuPlacement, plan_gpus

# Env for every actor process: one thread per process on a small CPU box; vLLM in-process.
ACTOR_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "RAY_DEDUP_LOGS": "1",
}


FORWARDED_ENV_PREFIXES = ("NCCL_", "GLOO_SOCKET_IFNAME", "DS_SKIP_CUDA_CHECK", "CUDA_HOME", "TORCH_EXTENSIONS_DIR")
"""Variables of the driver's environment passed on to every actor (docs/cluster.md): the NCCL
and gloo network interfaces and NCCL's other knobs, DeepSpeed's nvcc version check and where it
finds nvcc and caches its JIT-built ops. A joined cluster's actors otherwise see only the env of
``ray start`` on their node."""


def actor_env(cfg: Config, environ: dict[str, str]) -> dict[str, str]:
    """The ``runtime_env`` env vars of every actor: :data:`ACTOR_ENV`, the CPU KV-cache size, and
    the driver's :data:`FORWARDED_ENV_PREFIXES` variables."""
    env = dict(ACTOR_ENV)
    env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(cfg.rollout.kv_cache_gib)))
    env.update({k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)})
    return env


LOCAL_START_ATTEMPTS = 3
"""Tries to start the private local Ray instance before giving up."""


@dataclass(frozen=True)
class PoolLayout:
    """Resources of one bundle per rollout engine and one per learner rank."""

    rollout_bundles: list[dict[str, float]]
    learner_bundles: list[dict[str, float]]
    backend: str
    """Collective backend of the learner group: ``gloo`` on CPU, ``nccl`` on GPU."""
    placement: GpuPlacement | None = None
    """GPU only: the node / bundle / GPU of every engine's TP group and every learner rank
    (:func:`rl_vlm.distributed.placement.plan_gpus`); None on CPU."""
    colocate: bool = False
    """``cluster.colocate``: the two bundle lists are the same bundles, held by one placement
    group that both pools' actors share (engine k and learner rank k in bundle k)."""
    share: float = 1.0
    """The fraction of its bundle's CPUs and GPUs each actor asks Ray for: 1 split, 0.5 when an
    engine and a rank share the bundle."""


def pool_layout(cluster: ClusterConfig, rollout: RolloutConfig, learner: LearnerConfig, device: str) -> PoolLayout:
    """Bundle lists for the two placement groups; raises ConfigError for layouts that can't fit.

    On GPU, :func:`rl_vlm.distributed.placement.plan_gpus` checks the layout node by node (an engine's TP
    group never straddles nodes) and the bundles are its per-actor bundles in engine / rank order:
    ``{"GPU": tp}`` per engine, ``{"GPU": 1}`` per rank."""
    if device == "gpu":
        plan = plan_gpus(num_nodes=cluster.num_nodes, gpus_per_node=cluster.gpus_per_node,
                         num_engines=rollout.num_engines, tensor_parallel_size=rollout.tensor_parallel_size,
                         num_ranks=learner.num_ranks, colocate=cluster.colocate,
                         rollout_cpus_per_engine=cluster.rollout_cpus_per_engine,
                         learner_cpus_per_rank=cluster.learner_cpus_per_rank)
        if plan.colocate:
            # One {"GPU": 1} bundle per GPU, in rank order; engine k (tp 1, validated) sits on rank k's.
            shared = [{**b, **cluster.rollout_resources, **cluster.learner_resources}
                      for node in plan.node_bundles for b in node]
            return PoolLayout(shared, shared, "nccl", plan, colocate=True, share=plan.gpu_fraction)
        rb = [{**plan.node_bundles[s.node][s.bundles[0]], **cluster.rollout_resources} for s in plan.engines]
        lb = [{**plan.node_bundles[s.node][s.bundles[0]], **cluster.learner_resources} for s in plan.ranks]
        return PoolLayout(rb, lb, "nccl", plan)
    if cluster.colocate:
        # The pools take turns, so a shared bundle holds the larger of their CPU counts.
        cpus = float(max(cluster.rollout_cpus_per_engine, cluster.learner_cpus_per_rank))
        shared = [{"CPU": cpus, **cluster.rollout_resources, **cluster.learner_resources}
                  for _ in range(learner.num_ranks)]
        return PoolLayout(shared, shared, "gloo", colocate=True, share=0.5)
    rb = [{"CPU": float(cluster.rollout_cpus_per_engine), **cluster.rollout_resources}
          for _ in range(rollout.num_engines)]
    lb = [{"CPU": float(cluster.learner_cpus_per_rank), **cluster.learner_resources} for _ in range(learner.num_ranks)]
    return PoolLayout(rb, lb, "gloo")


def local_cpus(cfg: Config, layout: PoolLayout) -> int:
    """CPUs of the private local Ray instance: ``cluster.num_cpus``, or what the bundles need."""
    bundles = layout.learner_bundles if layout.colocate else layout.rollout_bundles + layout.learner_bundles
    return cfg.cluster.num_cpus or math.ceil(sum(b.get("CPU", 0) for b in bundles))


def start_ray(cfg: Config, layout: PoolLayout) -> None:
    """Start a private local Ray instance (``cluster.address=local``) or join an existing one."""
    import ray

    if ray.is_initialized():
        return
    import os

    runtime_env = {"env_vars": actor_env(cfg, dict(os.environ))}
    if cfg.cluster.address == "local":
        cpus = local_cpus(cfg, layout)
        for attempt in range(LOCAL_START_ATTEMPTS):
            try:
                ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env,
                         log_to_driver=cfg.cluster.log_to_driver, configure_logging=True, logging_level=logging.WARNING)
                break
            except Exception as e:  # Ray raises a bare Exception when its raylet registers too slowly
                # Ray waits a fixed 30 s for its raylet; an overloaded machine can miss that.
                if "timed out during startup" not in str(e) or attempt == LOCAL_START_ATTEMPTS - 1:
                    raise
                ray.shutdown()
    else:
        ray.init(address=cfg.cluster.address, runtime_env=runtime_env, log_to_driver=cfg.cluster.log_to_driver)
    check_cluster_gpus(layout, ray.cluster_resources())


def check_cluster_gpus(layout: PoolLayout, resources: dict[str, float]) -> None:
    """Refuse GPU pools that the Ray cluster cannot hold, as one ConfigError, before a placement
    group waits 120 s for GPUs that never come (``resources``: ``ray.cluster_resources()``)."""
    bundles = layout.learner_bundles if layout.colocate else layout.rollout_bundles + layout.learner_bundles
    need = sum(b.get("GPU", 0) for b in bundles)
    have = resources.get("GPU", 0)
    if need > have:
        raise ConfigError(f"cluster.device: the pools need {need:g} GPUs but the Ray cluster has {have:g} "
                          f"(resources: {dict(sorted(resources.items()))}); check that every node joined with its "
                          "GPUs (launch/ray_start.sh wait N), or use smaller pools / cluster.device=cpu")


def create_placement_group(bundles: list[dict[str, float]], name: str) -> Any:
    """A PACK placement group of ``bundles``, once Ray has reserved them (RuntimeError after 120 s)."""
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles, strategy="PACK", name=name)
    ready, _ = ray.wait([pg.ready()], timeout=120)
    if not ready:
        raise RuntimeError(f"placement group {name!r} with bundles {bundles} could not be scheduled "
                           f"within 120 s; cluster resources: {ray.cluster_resources()}")
    return pg


def bundle_strategy(pg: Any, index: int) -> Any:
    """The scheduling strategy that pins an actor to bundle ``index`` of ``pg``."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)
