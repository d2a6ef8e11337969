"""What a rollout engine hands to ``vllm.LLM`` (rl_vlm.distributed.workers.rollout.engine_args),
and what the pools hand to the engines and learner ranks, checked on CPU without vLLM or Ray.

The GPU arguments were read against vLLM 0.32's source (../shared/notes/gpu-path-review.md):
inside a placement-group actor vLLM picks its Ray executor for TP > 1, which refuses a bundle of
more than one GPU, so a TP engine must ask for the ``mp`` executor itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.config import RolloutConfig
from rl_vlm.distributed import pools
from rl_vlm.distributed.runtime import PoolLayout
from rl_vlm.distributed.workers.rollout import MIN_BATCHED_TOKENS, engine_args
from rl_vlm.validation import engine_max_model_len, resolve_enforce_eager
from tests.workers.fake_group import ActorGroupRecorder

HOOK = "rl_vlm.distributed.sync.engine_hook.WeightUpdateExtension"


def test_cpu_engine_arguments() -> None:
    args = engine_args("m", RolloutConfig(), 7, "cpu", 288)
    assert args == {
        "model": "m", "seed": 7, "dtype": "float32", "enforce_eager": True, "max_model_len": 288,
        "enable_chunked_prefill": False, "max_num_batched_tokens": MIN_BATCHED_TOKENS,
        "limit_mm_per_prompt": {"image": 4}, "worker_extension_cls": HOOK,
    }


def test_gpu_engine_arguments_tp1() -> None:
    args = engine_args("m", RolloutConfig(), 0, "gpu", 4096)
    assert args["dtype"] == "bfloat16"
    assert args["enforce_eager"] is False  # CUDA graphs on GPU by default
    assert (args["tensor_parallel_size"], args["gpu_memory_utilization"]) == (1, RolloutConfig().gpu_memory_utilization)
    # TP 1: vLLM's in-process ("uni") executor; no backend forced.
    assert "distributed_executor_backend" not in args
    assert args["worker_extension_cls"] == HOOK


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_engines_use_the_multiprocessing_executor(tp: int) -> None:
    args = engine_args("m", RolloutConfig(tensor_parallel_size=tp), 0, "gpu", 4096)
    assert args["tensor_parallel_size"] == tp
    assert args["distributed_executor_backend"] == "mp"
    # Every TP worker loads the extension that joins the weight-sync group and reloads.
    assert args["worker_extension_cls"] == HOOK


def test_long_engines_batch_at_least_one_whole_prompt() -> None:
    """Without chunked prefill one scheduler step must hold a whole prompt (CARE: 16 k + 768)."""
    args = engine_args("m", RolloutConfig(), 0, "gpu", 16384 + 768)
    assert args["max_model_len"] == args["max_num_batched_tokens"] == 17152


@pytest.mark.parametrize("value,device,want", [
    (None, "cpu", True), (None, "gpu", False), (True, "gpu", True), (False, "gpu", False), (False, "cpu", False),
])
def test_enforce_eager_resolves_per_device_and_an_explicit_value_wins(value: bool | None, device: str,
                                                                      want: bool) -> None:
    assert resolve_enforce_eager(value, device) is want
    assert engine_args("m", RolloutConfig(enforce_eager=value), 0, device, 64)["enforce_eager"] is want


def test_enforce_eager_from_the_command_line() -> None:
    assert compose([]).rollout.enforce_eager is None
    assert compose(["rollout.enforce_eager=true"]).rollout.enforce_eager is True


@pytest.mark.parametrize("overrides,want", [
    ([], 256 + 32),                                   # the tiny demo
    (["model=qwen2_5_vl_7b"], 2048 + 2048),           # a real model brings its lengths
    (["experiment=papo_g_7b"], 4096 + 2048),
    (["experiment=grpo_care_7b"], 16384 + 768),
])
def test_engine_length_is_prompt_plus_answer(overrides: list[str], want: int) -> None:
    assert engine_max_model_len(compose(overrides)) == want


def test_pools_pass_the_engine_length_and_the_resolved_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pools, "ActorGroup", ActorGroupRecorder)
    cfg = compose(["model=qwen2_5_vl_7b"])
    layout = PoolLayout([{"CPU": 1.0}] * 2, [{"CPU": 1.0}], "gloo")
    rollout = pools.RolloutGroup(cfg, layout, "cpu")
    assert [a[4] for a in rollout.group.args] == [4096, 4096]  # type: ignore[attr-defined]
    learners = pools.LearnerGroup(cfg, layout, "cpu")
    model = learners.group.args[0][2]  # type: ignore[attr-defined]
    assert cfg.model.attn_implementation == "auto" and model.attn_implementation == "sdpa"
    assert dataclasses.replace(model, attn_implementation="auto") == cfg.model


def test_a_shared_system_starts_engines_long_enough_for_the_runs_that_follow(tmp_path: Path) -> None:
    """SharedPools re-points engines at a run only if they are at least as long as the run
    needs; it starts them at SHARED_ENGINE_LEN (within the model's own limit) so runs with other
    prompt or answer lengths share them."""
    import json

    from rl_vlm.distributed.provider import SHARED_ENGINE_LEN, shared_engine_len

    short = compose(["rollout.max_new_tokens=16"])
    assert shared_engine_len(short) == SHARED_ENGINE_LEN == 2048
    long = compose(["data.max_prompt_length=4096", "rollout.max_new_tokens=512"])
    assert shared_engine_len(long) == 4096 + 512
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 1024}}))
    capped = compose([f"model.path={tmp_path}", "rollout.max_new_tokens=16"])
    assert shared_engine_len(capped) == 1024


def test_lora_and_sleep_mode_engine_arguments() -> None:
    from rl_vlm.config import LoraConfig

    args = engine_args("m", RolloutConfig(), 0, "gpu", 4096, LoraConfig(rank=12, vision_tower=True), sleep_mode=True)
    # vLLM accepts only its own ranks: 12 -> 16; one adapter at a time (each sync replaces it).
    assert (args["enable_lora"], args["max_lora_rank"], args["max_loras"]) == (True, 16, 1)
    assert args["enable_tower_connector_lora"] is True and args["enable_sleep_mode"] is True
    plain = engine_args("m", RolloutConfig(), 0, "cpu", 4096, LoraConfig(rank=0), sleep_mode=True)
    assert "enable_lora" not in plain and "enable_sleep_mode" not in plain  # no sleep mode in vLLM's CPU worker
