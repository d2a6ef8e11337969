"""GPU placement arithmetic (rl_vlm.distributed.placement) and the precision/offload validation, on CPU."""

from __future__ import annotations

import pytest

from rl_vlm.compose import compose
from rl_vlm.config import ClusterConfig, ConfigError, LearnerConfig, RolloutConfig
from rl_vlm.distributed.placement import GpuPlacement, plan_gpus
from rl_vlm.distributed.runtime import pool_layout
from rl_vlm.validation import resolve_rollout_dtype, validate


def _plan(nodes: int, engines: int, tp: int, ranks: int, colocate: bool = False, per_node: int = 8) -> GpuPlacement:
    return plan_gpus(num_nodes=nodes, gpus_per_node=per_node, num_engines=engines, tensor_parallel_size=tp,
                     num_ranks=ranks, colocate=colocate)


def _check_invariants(p: GpuPlacement, tp: int) -> None:
    """Every GPU is used by at most one actor per pool, and TP groups are contiguous on one node."""
    for pool in (p.engines, p.ranks):
        used = [(s.node, g) for s in pool for g in s.gpus]
        assert len(used) == len(set(used))
    if not p.colocate:
        eng = {(s.node, g) for s in p.engines for g in s.gpus}
        assert eng.isdisjoint({(s.node, g) for s in p.ranks for g in s.gpus})
    for s in p.engines:
        assert len(s.gpus) == tp and list(s.gpus) == list(range(s.gpus[0], s.gpus[0] + tp))
        assert all(0 <= g < p.gpus_per_node for g in s.gpus)
        for b in s.bundles:  # bundle indices are valid in that node's group
            assert b < len(p.node_bundles[s.node])


def test_split_1x8_four_engines_four_ranks() -> None:
    p = _plan(1, 4, 1, 4)
    _check_invariants(p, 1)
    assert [s.gpus for s in p.engines] == [(0,), (1,), (2,), (3,)]
    assert [s.gpus for s in p.ranks] == [(4,), (5,), (6,), (7,)]
    assert p.node_bundles == ((({"GPU": 1.0, "CPU": 1.0},) * 8),)
    assert p.num_gpus == 8 and p.gpu_fraction == 1.0
    assert p.describe().startswith("node 0: engine 0 (GPU 0), ")


def test_split_1x8_tp2() -> None:
    p = _plan(1, 2, 2, 4)
    _check_invariants(p, 2)
    assert [s.gpus for s in p.engines] == [(0, 1), (2, 3)]
    assert [s.bundles for s in p.engines] == [(0,), (1,)]
    assert p.node_bundles[0][0] == {"GPU": 2.0, "CPU": 1.0}
    assert [s.gpus for s in p.ranks] == [(4,), (5,), (6,), (7,)]


def test_split_2x8_tp4_engines_fill_node_0_ranks_node_1() -> None:
    p = _plan(2, 2, 4, 8)
    _check_invariants(p, 4)
    assert [(s.node, s.gpus) for s in p.engines] == [(0, (0, 1, 2, 3)), (0, (4, 5, 6, 7))]
    assert {s.node for s in p.ranks} == {1} and [s.gpus[0] for s in p.ranks] == list(range(8))


def test_split_4x8_tp2_eight_engines_sixteen_ranks() -> None:
    p = _plan(4, 8, 2, 16)
    _check_invariants(p, 2)
    assert [s.node for s in p.engines] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [s.node for s in p.ranks] == [2] * 8 + [3] * 8
    assert len(p.node_bundles) == 4 and p.num_gpus == 32


def test_split_leftover_gpus_and_learners_spanning_nodes() -> None:
    # 3 engines of 4 on 2x8: node 0 full of engines, node 1 has one engine + 4 ranks, 2 more nowhere.
    p = _plan(2, 3, 4, 4)
    _check_invariants(p, 4)
    assert [s.node for s in p.engines] == [0, 0, 1]
    assert [(s.node, s.gpus) for s in p.ranks] == [(1, (4,)), (1, (5,)), (1, (6,)), (1, (7,))]
    # Ranks may span nodes (NCCL), engines may not.
    p = _plan(2, 1, 4, 12)
    assert [s.node for s in p.ranks] == [0] * 4 + [1] * 8


def test_split_unused_nodes_are_left_out() -> None:
    p = _plan(4, 1, 1, 2)
    assert len(p.node_bundles) == 1


@pytest.mark.parametrize("nodes,engines,tp,ranks", [(1, 8, 1, 8), (2, 8, 2, 16), (4, 8, 4, 32), (2, 4, 4, 16)])
def test_colocated_layouts(nodes: int, engines: int, tp: int, ranks: int) -> None:
    p = _plan(nodes, engines, tp, ranks, colocate=True)
    _check_invariants(p, tp)
    assert p.colocate and p.gpu_fraction == 0.5
    assert p.num_gpus == ranks  # one bundle per GPU, shared by a rank and an engine's share
    assert all(b == {"GPU": 1.0, "CPU": 2.0} for node in p.node_bundles for b in node)
    for k, s in enumerate(p.engines):  # engine k = the GPUs of ranks k*tp .. k*tp+tp-1
        ranks_here = p.ranks[k * tp:(k + 1) * tp]
        assert {r.node for r in ranks_here} == {s.node}
        assert tuple(r.gpus[0] for r in ranks_here) == s.gpus == s.bundles


@pytest.mark.parametrize("kwargs,key,text", [
    # TP larger than a node
    (dict(nodes=2, engines=1, tp=16, ranks=1), "rollout.tensor_parallel_size", "exceeds cluster.gpus_per_node=8"),
    # more GPUs than the cluster
    (dict(nodes=1, engines=4, tp=2, ranks=4), "cluster.num_nodes", "need 12 GPUs"),
    (dict(nodes=2, engines=8, tp=2, ranks=4), "cluster.num_nodes", "2 x 8 = 16"),
    # fits by count, not by node: 3-GPU groups leave 2 GPUs per node that no engine can use
    (dict(nodes=2, engines=5, tp=3, ranks=1), "rollout.tensor_parallel_size", "hold at most 4"),
    (dict(nodes=1, engines=1, tp=0, ranks=1), "rollout.tensor_parallel_size", ">= 1"),
    (dict(nodes=0, engines=1, tp=1, ranks=1), "cluster.num_nodes", ">= 1"),
    (dict(nodes=1, engines=0, tp=1, ranks=1), "rollout.num_engines", ">= 1"),
    (dict(nodes=1, engines=1, tp=1, ranks=0), "learner.num_ranks", ">= 1"),
    # colocated: tp must divide the shared GPUs; engines x tp must cover them exactly
    (dict(nodes=1, engines=2, tp=3, ranks=8, colocate=True), "rollout.tensor_parallel_size", "does not divide the 8"),
    (dict(nodes=1, engines=2, tp=2, ranks=8, colocate=True), "rollout.num_engines", "set rollout.num_engines=4"),
    (dict(nodes=1, engines=16, tp=1, ranks=16, colocate=True), "cluster.num_nodes", "1 x 8 = 8"),
    # colocated across nodes with tp not dividing the node: engine 1 would straddle nodes 0 and 1
    (dict(nodes=2, engines=2, tp=6, ranks=12, colocate=True), "rollout.tensor_parallel_size", "span GPUs 6-11"),
])
def test_impossible_layouts_name_the_key(kwargs: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        _plan(**kwargs)
    assert str(e.value).startswith(key + ":"), str(e.value)
    assert text in str(e.value), str(e.value)


def test_pool_layout_keeps_the_cpu_path_and_uses_the_plan_on_gpu() -> None:
    cpu = pool_layout(ClusterConfig(), RolloutConfig(num_engines=1), LearnerConfig(num_ranks=2), "cpu")
    assert cpu.rollout_bundles == [{"CPU": 1.0}] and cpu.learner_bundles == [{"CPU": 1.0}] * 2
    assert cpu.backend == "gloo" and cpu.placement is None
    gpu = pool_layout(ClusterConfig(num_nodes=2), RolloutConfig(num_engines=3, tensor_parallel_size=4),
                      LearnerConfig(num_ranks=4), "gpu")
    assert gpu.rollout_bundles == [{"GPU": 4.0, "CPU": 1.0}] * 3
    assert gpu.learner_bundles == [{"GPU": 1.0, "CPU": 1.0}] * 4
    assert gpu.placement is not None and [s.node for s in gpu.placement.engines] == [0, 0, 1]
    assert not cpu.colocate and not gpu.colocate and cpu.share == gpu.share == 1.0


def test_colocated_pool_layouts_share_one_bundle_per_rank() -> None:
    """Engine k and learner rank k in bundle k of one placement group, each asking for half of it."""
    gpu = pool_layout(ClusterConfig(colocate=True, gpus_per_node=4), RolloutConfig(num_engines=4),
                      LearnerConfig(num_ranks=4), "gpu")
    assert gpu.colocate and gpu.share == 0.5 and gpu.backend == "nccl"
    assert gpu.rollout_bundles == gpu.learner_bundles == [{"GPU": 1.0, "CPU": 2.0}] * 4
    # On CPU the pools take turns: a bundle holds the larger CPU count, not the sum.
    cpu = pool_layout(ClusterConfig(colocate=True, rollout_cpus_per_engine=2), RolloutConfig(num_engines=2),
                      LearnerConfig(num_ranks=2), "cpu")
    assert cpu.colocate and cpu.share == 0.5 and cpu.rollout_bundles == cpu.learner_bundles == [{"CPU": 2.0}] * 2


# --------------------------------------------------------------------- precision, kernels, offload
GPU = ["cluster.device=gpu"]


@pytest.mark.parametrize("overrides,key", [
    (["model.dtype=bfloat16", "cluster.device=cpu"], "model.dtype"),
    (["rollout.dtype=bfloat16", "cluster.device=cpu"], "rollout.dtype"),
    (["cluster.colocate=true", "cluster.device=cpu"], "rollout.num_engines"),  # 1 engine, 2 ranks
    (["cluster.colocate=true", "cluster.device=cpu", "rollout.num_engines=2", "trainer.max_staleness=1"],
     "trainer.max_staleness"),
    (["model.attn_implementation=flash_attention_2", "cluster.device=cpu"], "model.attn_implementation"),
    (GPU + ["model.attn_implementation=flash_attention_2", "model.dtype=float32"], "model.attn_implementation"),
    (["learner.offload_params=true", "learner.zero_stage=2"], "learner.offload_params"),
    (["learner.offload_optimizer=true", "learner.zero_stage=0"], "learner.offload_optimizer"),
    (GPU + ["rollout.tensor_parallel_size=16"], "rollout.tensor_parallel_size"),
    (GPU + ["rollout.num_engines=4", "rollout.tensor_parallel_size=2", "learner.num_ranks=4"], "cluster.num_nodes"),
    # colocated on GPU: TP 1 engines, no NCCL group on a shared GPU, base weights kept for LoRA
    (GPU + ["cluster.colocate=true", "rollout.num_engines=1", "rollout.tensor_parallel_size=2", "learner.num_ranks=2"],
     "rollout.tensor_parallel_size"),
    (GPU + ["cluster.colocate=true", "rollout.num_engines=2", "learner.num_ranks=2", "cluster.weight_sync=collective"],
     "cluster.weight_sync"),
    (GPU + ["cluster.colocate=true", "rollout.num_engines=2", "learner.num_ranks=2", "model.lora.rank=8",
            "rollout.sleep_level=2"], "rollout.sleep_level"),
    (["model.lora.rank=600"], "model.lora.rank"),
    (["model.lora.rank=8", "model.lora.target_modules=[]"], "model.lora.target_modules"),
    (["model.lora.rank=8", "cluster.weight_sync=collective"], "cluster.weight_sync"),
    (GPU + ["cluster.colocate=true", "rollout.num_engines=1", "learner.num_ranks=2"], "rollout.num_engines"),
])
def test_precision_and_layout_validation_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides), check_paths=False)
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_a_valid_colocated_layout_validates() -> None:
    cpu = validate(compose(["cluster.colocate=true", "cluster.device=cpu", "rollout.num_engines=2"]),
                   check_paths=False)
    assert cpu.cluster.colocate
    gpu = validate(compose(GPU + ["cluster.colocate=true", "rollout.num_engines=2", "learner.num_ranks=2"]),
                   check_paths=False)  # the tiny model fits any GPU
    assert gpu.cluster.colocate


@pytest.mark.parametrize("model", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_gpu_model_configs_validate_on_an_8_gpu_node(model: str) -> None:
    cfg = validate(compose([f"model={model}", "cluster=gpu_node", "rollout.num_engines=4", "learner.num_ranks=4",
                            "learner.micro_batch_size=4"]), check_paths=False)
    m = cfg.model
    assert (m.dtype, m.attn_implementation, m.gradient_checkpointing) == ("bfloat16", "auto", True)
    assert cfg.rollout.dtype == "auto" and resolve_rollout_dtype(cfg.rollout.dtype, "gpu") == "bfloat16"


def test_cpu_defaults_unchanged() -> None:
    cfg = validate(compose([]), check_paths=False)
    assert cfg.model.dtype == "float32" and cfg.cluster.colocate is False
    assert resolve_rollout_dtype(cfg.rollout.dtype, "cpu") == "float32"
    assert resolve_rollout_dtype("float16", "gpu") == "float16"
