"""Every config file composes and validates; bad configs fail early with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_vlm.compose import compose, config_dir
from rl_vlm.config import (
    ClusterConfig,
    Config,
    ConfigError,
    LearnerConfig,
    RolloutConfig,
)
from rl_vlm.distributed.runtime import pool_layout
from rl_vlm.validation import validate


def _group_options() -> list[str]:
    root = config_dir()
    return [f"{g.name}={f.stem}" for g in sorted(root.iterdir()) if g.is_dir() and g.name != "experiment"
            for f in sorted(g.glob("*.yaml"))]


@pytest.mark.parametrize("override", _group_options())
def test_every_group_option_composes(override: str) -> None:
    cfg = compose([override])
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    cfg = compose([f"experiment={experiment}"])
    # GPU experiments validate against their declared GPU layout regardless of this machine.
    validate(cfg, check_paths=False)


def test_experiment_overrides_reach_the_dataclasses() -> None:
    cfg = compose(["experiment=grpo_qwen2_5_vl_7b"])
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg.model.dtype == "bfloat16"
    assert cfg.learner.lr == 1e-6 and cfg.rollout.n == 5
    # Keys the experiment does not mention keep the dataclass defaults.
    assert cfg.algorithm.clip_dual == 3.0


def test_command_line_overrides_and_types() -> None:
    cfg = compose(["learner.lr=1e-3", "rollout.n=4", "data.train_files=[a.jsonl,b.jsonl]"])
    assert cfg.learner.lr == 1e-3 and isinstance(cfg.learner.lr, float)
    assert cfg.rollout.n == 4
    assert cfg.data.train_files == ("a.jsonl", "b.jsonl")


def test_misspelled_key_on_command_line_is_named() -> None:
    with pytest.raises(ConfigError, match=r"learner\.lrr"):
        compose(["learner.lrr=1e-3"])


def test_unknown_key_in_a_yaml_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "learner" / "default.yaml").write_text("num_ranks: 2\nmicro_batch: 4\n")
    monkeypatch.setenv("RL_VLM_CONFIG_DIR", str(root))
    with pytest.raises(ConfigError, match=r"unknown config key 'learner\.micro_batch'"):
        compose([])


def test_wrong_type_and_bad_choice_are_named() -> None:
    with pytest.raises(ConfigError, match=r"learner\.lr: expected a number"):
        compose(["learner.lr=fast"])
    with pytest.raises(ConfigError, match=r"algorithm\.loss_agg: 'mean' is not one of"):
        compose(["algorithm.loss_agg=mean"])
    with pytest.raises(ConfigError, match=r"rollout\.n: expected an integer"):
        compose(["rollout.n=2.5"])


@pytest.mark.parametrize("overrides,key", [
    (["learner.mini_batch_size=5"], "learner.mini_batch_size"),
    (["learner.micro_batch_size=3"], "learner.micro_batch_size"),
    # The budget must hold the longest sequence (prompt + answer).
    (["learner.max_tokens_per_micro_batch=64"], "learner.max_tokens_per_micro_batch"),
    (["rollout.n=1"], "rollout.n"),
    (["rollout.val_n=4"], "rollout.val_temperature"),
    (["learner.num_ranks=3"], "learner.num_ranks"),
    (["cluster.num_cpus=2"], "cluster.num_cpus"),
    (["model.attn_implementation=flash_attention_2", "cluster.device=cpu"], "model.attn_implementation"),
    (["cluster.device=gpu", "cluster.gpus_per_node=4", "rollout.num_engines=4"], "cluster.gpus_per_node"),
    (["trainer.max_staleness=-1"], "trainer.max_staleness"),
    # Batches sampled ahead would cross the stage boundary.
    (["curriculum=curr_reft", "trainer.max_staleness=1"], "trainer.max_staleness"),
    # With the engine's log-probs as pi_old every importance weight is 1.
    (["algorithm.rollout_correction.mode=tis", "learner.old_logprobs=rollout", "rollout.temperature=1.0",
      "rollout.top_p=1.0"], "algorithm.rollout_correction.mode"),
])
def test_validation_names_the_offending_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(overrides), check_paths=False)


def test_a_token_budget_frees_the_micro_batch_size() -> None:
    # micro_batch_size=3 does not divide the sequences a rank gets; with a budget it is unused.
    validate(compose(["learner.micro_batch_size=3", "learner.max_tokens_per_micro_batch=4096"]), check_paths=False)


def test_missing_model_path_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"model\.path"):
        validate(compose(["model.path=/nonexistent/model"]))


def test_pool_layout_cpu_and_gpu() -> None:
    r, lc = RolloutConfig(num_engines=2), LearnerConfig(num_ranks=2)
    cpu = pool_layout(ClusterConfig(), r, lc, "cpu")
    assert cpu.backend == "gloo" and cpu.rollout_bundles == [{"CPU": 1.0}] * 2
    assert cpu.learner_bundles == [{"CPU": 1.0}] * 2
    gpu = pool_layout(ClusterConfig(gpus_per_node=8), RolloutConfig(num_engines=2, tensor_parallel_size=2),
                      LearnerConfig(num_ranks=4), "gpu")
    assert gpu.backend == "nccl"
    assert [b["GPU"] for b in gpu.rollout_bundles] == [2.0, 2.0]
    assert [b["GPU"] for b in gpu.learner_bundles] == [1.0] * 4
    with pytest.raises(ConfigError, match="cluster.num_nodes"):
        pool_layout(ClusterConfig(gpus_per_node=8), RolloutConfig(num_engines=4, tensor_parallel_size=2),
                    LearnerConfig(num_ranks=4), "gpu")
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        pool_layout(ClusterConfig(gpus_per_node=8), RolloutConfig(tensor_parallel_size=16), lc, "gpu")


def test_old_logprobs_from_rollout_needs_the_raw_distribution() -> None:
    """π_old = vLLM's sampling log-probs is only the learner's π_old at temperature 1, top_p 1."""
    assert validate(compose(["learner.old_logprobs=rollout"]), check_paths=False).learner.old_logprobs == "rollout"
    with pytest.raises(ConfigError, match=r"learner\.old_logprobs.*temperature=0\.7"):
        validate(compose(["learner.old_logprobs=rollout", "rollout.temperature=0.7"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"learner\.old_logprobs: 'fresh' is not one of"):
        compose(["learner.old_logprobs=fresh"])


@pytest.mark.parametrize("key", ["rollout.torch_threads", "learner.torch_threads"])
def test_thread_counts_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: must be >= 1, got 0"):
        validate(compose([f"{key}=0"]), check_paths=False)


# ------------------------------------------------------------------------------ reward functions
def test_unknown_reward_name_on_the_command_line_is_one_config_error() -> None:
    from rl_vlm.rewards import REWARDS

    with pytest.raises(ConfigError) as e:
        validate(compose(["reward.functions=[{name: nosuch, weight: 1}]"]), check_paths=False)
    assert str(e.value) == (f"reward.functions[0].name: unknown reward 'nosuch' (known: {', '.join(sorted(REWARDS))}; "
                            "or give path/to/file.py:fn or package.module:fn)")


def test_unknown_reward_in_a_task_set_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^reward\.by_task\.math\[1\]\.name: unknown reward 'mth' \(known: "):
        validate(compose(["reward=mixed_tasks", "reward.by_task.math=[{name: format, weight: 0.1}, {name: mth}]"]),
                 check_paths=False)


def test_bad_user_reward_files_are_named(tmp_path: Path) -> None:
    missing = f"{tmp_path}/nope.py:score"
    with pytest.raises(ConfigError) as e:
        validate(compose([f"reward.functions=[{{name: '{missing}', weight: 1}}]"]))
    assert str(e.value) == f"reward.functions[0].name: {missing!r}: file '{tmp_path}/nope.py' does not exist"
    f = tmp_path / "rewards.py"
    f.write_text("def score(response):\n    return 1.0\n\ndef strict(response, row):\n    return 1.0\n")
    with pytest.raises(ConfigError) as e:
        validate(compose([f"reward.functions=[{{name: '{f}:score', weight: 1}}]"]))
    assert str(e.value) == (f"reward.functions[0].name: '{f}:score' must accept (response, row) as its first two "
                            "positional arguments; its signature is (response)")
    with pytest.raises(ConfigError) as e:
        validate(compose([f"reward.functions=[{{name: '{f}:strict', weight: 1, kwargs: {{t: 1}}}}]"]))
    assert str(e.value) == (f"reward.functions[0].kwargs: '{f}:strict' cannot be called as fn(response, row, "
                            "**{'t': 1}): got an unexpected keyword argument 't' (its signature is (response, row))")


def test_reward_circuit_breaker_keys() -> None:
    cfg = compose(["reward.max_consecutive_errors=4", "reward.on_repeated_errors=stop"])
    assert (cfg.reward.max_consecutive_errors, cfg.reward.on_repeated_errors) == (4, "stop")
    assert compose([]).reward.max_consecutive_errors == 16 and compose([]).reward.on_repeated_errors == "disable"
    with pytest.raises(ConfigError, match=r"^reward\.on_repeated_errors: 'skip' is not one of \['disable', 'stop'\]$"):
        compose(["reward.on_repeated_errors=skip"])
    with pytest.raises(ConfigError, match=r"^reward\.max_consecutive_errors: must be >= 0 \(0 = never trip\), got -1$"):
        compose(["reward.max_consecutive_errors=-1"])


# ------------------------------------------------------------------------------ algorithm presets
def _restated_defaults(node: dict, defaults: dict, prefix: str = "") -> list[str]:
    """The keys of a YAML mapping whose value equals the dataclass default at that key."""
    out = []
    for k, v in node.items():
        if isinstance(v, dict) and isinstance(defaults.get(k), dict):
            out += _restated_defaults(v, defaults[k], f"{prefix}{k}.")
        elif k in defaults and defaults[k] == v:
            out.append(f"{prefix}{k}: {v!r}")
    return out


@pytest.mark.parametrize("preset", sorted(p.name for p in (config_dir() / "algorithm").glob("*.yaml")))
def test_algorithm_presets_only_override_defaults(preset: str) -> None:
    """YAML chooses and overrides: a preset (merged over the dataclass defaults) never restates one."""
    from omegaconf import OmegaConf

    from rl_vlm.config import AlgorithmConfig, to_dict

    raw = OmegaConf.to_container(OmegaConf.load(config_dir() / "algorithm" / preset)) or {}
    assert isinstance(raw, dict)
    assert not _restated_defaults(raw, to_dict(AlgorithmConfig())), f"{preset} restates dataclass defaults"


def test_config_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, rl_vlm.config; assert 'torch' not in sys.modules, 'rl_vlm.config imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_variant_configs_validate_themselves_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^algorithm\.papo\.gamma: must be >= 0, got -1\.0$"):
        compose(["algorithm=papo", "algorithm.papo.gamma=-1"])
    with pytest.raises(ConfigError, match=r"^algorithm\.vogue\.alpha_p: paper mode needs alpha_p >= 0"):
        compose(["algorithm=vogue_paper", "algorithm.vogue.alpha_p=-1"])
