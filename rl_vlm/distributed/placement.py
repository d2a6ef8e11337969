"""GPU placement arithmetic: which node, which placement-group bundle and which GPUs every
rollout engine (its whole tensor-parallel group) and every learner rank gets.

Pure integer arithmetic, no Ray import, so every layout and every refusal is unit-tested on a
CPU box (``tests/test_placement.py``). Ray's side (one ``STRICT_PACK`` placement group per node,
built from :attr:`GpuPlacement.node_bundles`) lives in :mod:`rl_vlm.distributed.pools`.

Two modes:

* **split** (``cluster.colocate=false``): rollout and learner own disjoint GPUs. Engines are
  placed first, first-fit over nodes in order, each as ONE bundle ``{"GPU": tp}`` (a bundle
  never spans nodes, so a TP group never does); learner ranks then take the remaining GPUs one
  bundle ``{"GPU": 1}`` each, filling nodes in order (ranks may span nodes: NCCL connects them).
* **colocated** (``cluster.colocate=true``): every GPU hosts one learner rank *and* a 1/tp share
  of an engine, time-sliced with vLLM sleep/wake. One bundle ``{"GPU": 1}`` per GPU; rank r sits
  on GPU r; engine k's TP group is GPUs ``k*tp .. k*tp+tp-1``, which must lie on one node. Each
  actor (or vLLM TP worker) asks for :attr:`GpuPlacement.gpu_fraction` of its bundle's GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from rl_vlm.config import ConfigError


@dataclass(frozen=True)
class Slot:
    """Where one actor goes."""

    node: int
    """Node index 0..num_nodes-1 (the order of the per-node placement groups)."""
    bundles: tuple[int, ...]
    """Bundle indices in that node's placement group: one in split mode, tp for a colocated engine."""
    gpus: tuple[int, ...]
    """Node-local GPU indices it uses (0..gpus_per_node-1)."""


@dataclass(frozen=True)
class GpuPlacement:
    colocate: bool
    gpus_per_node: int
    node_bundles: tuple[tuple[dict[str, float], ...], ...]
    """Per used node, the bundles of its placement group (nodes with no actor are left out)."""
    engines: tuple[Slot, ...]
    """Engine k's TP group: ``len(gpus) == rollout.tensor_parallel_size``, all on one node."""
    ranks: tuple[Slot, ...]
    """Learner rank r."""
    gpu_fraction: float
    """``num_gpus`` each actor requests per GPU of its bundle: 1.0 split, 0.5 colocated."""

    @property
    def num_gpus(self) -> int:
        return sum(int(b["GPU"]) for node in self.node_bundles for b in node)

    def describe(self) -> str:
        """One line per node: ``node 0: GPU 0-1 engine 0 | GPU 2 rank 0 ...`` (for logs and docs)."""
        lines = []
        for n in range(len(self.node_bundles)):
            parts = [f"engine {k} (GPU {_span(s.gpus)})" for k, s in enumerate(self.engines) if s.node == n]
            parts += [f"rank {r} (GPU {_span(s.gpus)})" for r, s in enumerate(self.ranks) if s.node == n]
            lines.append(f"node {n}: " + ", ".join(parts))
        return "\n".join(lines)


def _span(gpus: tuple[int, ...]) -> str:
    return str(gpus[0]) if len(gpus) == 1 else f"{gpus[0]}-{gpus[-1]}"


def _fail(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def plan_gpus(*, num_nodes: int, gpus_per_node: int, num_engines: int, tensor_parallel_size: int,
              num_ranks: int, colocate: bool = False, rollout_cpus_per_engine: int = 1,
              learner_cpus_per_rank: int = 1) -> GpuPlacement:
    """Place ``num_engines`` engines of ``tensor_parallel_size`` GPUs and ``num_ranks`` learner
    ranks on ``num_nodes`` x ``gpus_per_node`` GPUs. Raises :class:`ConfigError` naming the config
    key to change when the layout is impossible."""
    tp, per_node = tensor_parallel_size, gpus_per_node
    if num_nodes < 1:
        raise _fail("cluster.num_nodes", f"must be >= 1, got {num_nodes}")
    if per_node < 1:
        raise _fail("cluster.gpus_per_node", f"must be >= 1, got {per_node}")
    if tp < 1:
        raise _fail("rollout.tensor_parallel_size", f"must be >= 1, got {tp}")
    if num_engines < 1:
        raise _fail("rollout.num_engines", f"must be >= 1, got {num_engines}")
    if num_ranks < 1:
        raise _fail("learner.num_ranks", f"must be >= 1, got {num_ranks}")
    if tp > per_node:
        raise _fail("rollout.tensor_parallel_size",
                    f"{tp} exceeds cluster.gpus_per_node={per_node} (a TP group must stay on one node)")
    total = num_nodes * per_node
    if colocate:
        return _plan_colocated(num_nodes, per_node, num_engines, tp, num_ranks, total,
                               rollout_cpus_per_engine + learner_cpus_per_rank)
    need = num_engines * tp + num_ranks
    if need > total:
        raise _fail("cluster.num_nodes",
                    f"pools need {need} GPUs (rollout.num_engines={num_engines} x rollout.tensor_parallel_size="
                    f"{tp} + learner.num_ranks={num_ranks}) but cluster.num_nodes x cluster.gpus_per_node = "
                    f"{num_nodes} x {per_node} = {total}")
    free = [per_node] * num_nodes
    bundles: list[list[dict[str, float]]] = [[] for _ in range(num_nodes)]
    engines: list[Slot] = []
    for _ in range(num_engines):
        node = next((n for n in range(num_nodes) if free[n] >= tp), None)
        if node is None:
            fit = (per_node // tp) * num_nodes
            raise _fail("rollout.tensor_parallel_size",
                        f"{num_engines} engines of {tp} GPUs do not fit: TP groups cannot straddle nodes, so "
                        f"{num_nodes} node(s) of cluster.gpus_per_node={per_node} hold at most {fit} "
                        f"(choose a tensor_parallel_size that divides {per_node}, or fewer rollout.num_engines)")
        first = per_node - free[node]
        engines.append(Slot(node, (len(bundles[node]),), tuple(range(first, first + tp))))
        bundles[node].append({"GPU": float(tp), "CPU": float(rollout_cpus_per_engine)})
        free[node] -= tp
    ranks: list[Slot] = []
    for _ in range(num_ranks):
        node = next(n for n in range(num_nodes) if free[n] >= 1)  # exists: need <= total
        gpu = per_node - free[node]
        ranks.append(Slot(node, (len(bundles[node]),), (gpu,)))
        bundles[node].append({"GPU": 1.0, "CPU": float(learner_cpus_per_rank)})
        free[node] -= 1
    return GpuPlacement(False, per_node, tuple(tuple(b) for b in bundles if b), tuple(engines), tuple(ranks), 1.0)


def _plan_colocated(num_nodes: int, per_node: int, num_engines: int, tp: int, num_ranks: int, total: int,
                    cpus_per_gpu: int) -> GpuPlacement:
    if num_ranks > total:
        raise _fail("cluster.num_nodes",
                    f"colocated pools need learner.num_ranks={num_ranks} GPUs but cluster.num_nodes x "
                    f"cluster.gpus_per_node = {num_nodes} x {per_node} = {total}")
    if num_ranks % tp:
        raise _fail("rollout.tensor_parallel_size",
                    f"{tp} does not divide the {num_ranks} colocated GPUs (learner.num_ranks): every GPU "
                    f"holds one learner rank and a 1/tp share of an engine")
    if num_engines * tp != num_ranks:
        raise _fail("rollout.num_engines",
                    f"colocated pools share their GPUs: rollout.num_engines x rollout.tensor_parallel_size = "
                    f"{num_engines} x {tp} = {num_engines * tp} must equal learner.num_ranks={num_ranks} "
                    f"(set rollout.num_engines={num_ranks // tp})")
    engines = []
    for k in range(num_engines):
        first, last = k * tp, k * tp + tp - 1
        if first // per_node != last // per_node:
            raise _fail("rollout.tensor_parallel_size",
                        f"engine {k} would span GPUs {first}-{last} across nodes {first // per_node} and "
                        f"{last // per_node}: with colocated pools on several nodes tp must divide "
                        f"cluster.gpus_per_node={per_node}")
        node = first // per_node
        local = tuple(g - node * per_node for g in range(first, last + 1))
        engines.append(Slot(node, local, local))
    ranks = tuple(Slot(r // per_node, (r % per_node,), (r % per_node,)) for r in range(num_ranks))
    used = (num_ranks + per_node - 1) // per_node
    bundles = tuple(tuple({"GPU": 1.0, "CPU": float(cpus_per_gpu)}
                          for _ in range(min(per_node, num_ranks - n * per_node))) for n in range(used))
    return GpuPlacement(True, per_node, bundles, tuple(engines), ranks, 0.5)
