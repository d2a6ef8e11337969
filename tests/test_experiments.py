"""Every experiment file composes and validates, and the paper reproductions carry the authors'
hyperparameters (algorithms.md §2.4, §3.4, §4.3, §5.1, §5.3).

GPU experiments are validated as GPU layouts (``cluster.device=gpu``: bf16, attention kernel and
the placement of the pools on the declared GPUs), CPU ones as CPU layouts, whatever this machine
has. Data paths are placeholders (no hub access), so paths are not checked.
"""

from __future__ import annotations

from typing import Any

import pytest

from rl_vlm.algorithms import build_algorithm
from rl_vlm.compose import compose, config_dir
from rl_vlm.config import Config
from rl_vlm.validation import validate

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def _is_gpu(cfg: Config) -> bool:
    return cfg.cluster.device == "gpu" or cfg.model.dtype == "bfloat16"


def _load(name: str) -> Config:
    """Compose ``experiment=<name>`` and validate it on the device it was written for."""
    cfg = compose([f"experiment={name}"])
    device = "gpu" if _is_gpu(cfg) else "cpu"
    cfg = compose([f"experiment={name}", f"cluster.device={device}"])
    return validate(cfg, check_paths=False)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name: str) -> None:
    cfg = _load(name)
    build_algorithm(cfg.algorithm)
    if _is_gpu(cfg):
        c, r, lc = cfg.cluster, cfg.rollout, cfg.learner
        if c.colocate:
            # Engine k beside rank k on every GPU of one node (validation checked that it fits).
            assert c.num_nodes == 1 and r.num_engines * r.tensor_parallel_size == lc.num_ranks == c.gpus_per_node
        else:
            # One node of 8 GPUs, split between vLLM engines and ZeRO-3 ranks.
            assert (c.num_nodes, c.gpus_per_node) == (1, 8)
            assert r.num_engines * r.tensor_parallel_size + lc.num_ranks <= 8
        assert cfg.model.attn_implementation == "auto"  # flash-attention 2 where flash-attn imports, else sdpa
    else:
        assert cfg.model.path == "artifacts/tiny-qwen2.5-vl"


# (algorithm preset, model size) of each paper reproduction, and the values to check: dotted
# config paths -> expected value.
COMMON_EASYR1: dict[str, Any] = {
    "learner.lr": 1e-6, "learner.weight_decay": 1e-2, "learner.grad_clip": 1.0, "learner.warmup_steps": 0,
    "rollout.temperature": 1.0, "algorithm.loss_agg": "token-mean", "algorithm.clip_low": 0.2,
    "algorithm.clip_dual": 3.0, "algorithm.norm_adv_by_std": True, "algorithm.adv_eps": 1e-6,
}
PAPO_DATA: dict[str, Any] = {
    **COMMON_EASYR1,
    "rollout.n": 5, "rollout.top_p": 0.99, "data.rollout_batch_size": 384, "learner.mini_batch_size": 128,
    "learner.micro_batch_size": 4, "data.max_prompt_length": 4096, "rollout.max_new_tokens": 2048,
    "model.min_pixels": 200704, "model.max_pixels": 1003520, "trainer.total_steps": 202,
    "algorithm.papo.kl_estimator": "k3", "algorithm.papo.mask_prob": 0.6, "algorithm.papo.patch_size": 14,
    "algorithm.papo.recompute_with_grad": False, "algorithm.papo.schedule": "fixed",
    "reward.weights": {"format": 0.1, "accuracy": 0.9},
}
DAPO_FILTER: dict[str, Any] = {  # EasyR1 online_filtering on accuracy in (0.01, 0.99)
    "data.dynamic_sampling": True, "data.filter_key": "accuracy", "data.filter_low": 0.01, "data.filter_high": 0.99,
}
PAPO_G: dict[str, Any] = {
    **PAPO_DATA, "data.dynamic_sampling": False, "algorithm.name": "papo", "algorithm.papo.gamma": 0.02, "algorithm.kl_coef": 0.01,
    "algorithm.kl_estimator": "k3", "algorithm.clip_high": 0.3,
}
VOGUE_COMMON: dict[str, Any] = {
    **COMMON_EASYR1,
    "algorithm.name": "vogue", "rollout.n": 5, "rollout.top_p": 1.0, "learner.mini_batch_size": 128,
    "algorithm.kl_coef": 0.0, "algorithm.clip_high": 0.3, "trainer.total_steps": 200,
    "data.max_prompt_length": 2048, "rollout.max_new_tokens": 2048,
    "model.min_pixels": 262144, "model.max_pixels": 4194304,
    "algorithm.vogue.alpha_o": 0.4, "algorithm.vogue.beta_o": 2.0, "algorithm.vogue.alpha_p": 1.0,
    "algorithm.vogue.beta_p": 2.0, "algorithm.vogue.entropy_shaping": True,
    "algorithm.vogue.schedule": "adaptive", "algorithm.vogue.augmentation_strength": 1.0,
    "data.dynamic_sampling": False,
}
PAPER_SPECS: dict[str, dict[str, Any]] = {
    "papo_g_7b": {**PAPO_G, "model.path": "Qwen/Qwen2.5-VL-7B-Instruct",
                  "algorithm.papo.entropy_ori": 0.05, "algorithm.papo.entropy_aug": 0.05},
    "papo_g_3b": {**PAPO_G, "model.path": "Qwen/Qwen2.5-VL-3B-Instruct",
                  "algorithm.papo.entropy_ori": 0.0, "algorithm.papo.entropy_aug": 0.0},
    "papo_d_7b": {**PAPO_DATA, **DAPO_FILTER, "model.path": "Qwen/Qwen2.5-VL-7B-Instruct", "algorithm.name": "papo",
                  "algorithm.papo.gamma": 0.01, "algorithm.kl_coef": 0.0, "algorithm.clip_high": 0.28,
                  "algorithm.papo.entropy_ori": 0.03, "algorithm.papo.entropy_aug": 0.03},
    "vppo_7b": {
        **COMMON_EASYR1, **DAPO_FILTER, "model.path": "Qwen/Qwen2.5-VL-7B-Instruct", "algorithm.name": "vppo",
        "algorithm.vppo.top_p_tokens": 0.4, "algorithm.vppo.beta_min": 0.9, "algorithm.vppo.entropy_penalty": 0.06,
        "algorithm.vppo.advantage_shaping": True, "algorithm.vppo.token_filtering": True,
        "algorithm.vppo.mask_prob": 0.5, "algorithm.vppo.dependency": "sampled_k3",
        "algorithm.vppo.stats_scope": "micro_batch", "algorithm.kl_coef": 0.0, "algorithm.clip_high": 0.28,
        "rollout.n": 8, "rollout.top_p": 0.99, "data.rollout_batch_size": 384, "learner.mini_batch_size": 128,
        "learner.micro_batch_size": 16, "data.max_prompt_length": 4096, "rollout.max_new_tokens": 2048,
        "model.min_pixels": 200704, "model.max_pixels": 1003520, "trainer.total_steps": 202,
        "reward.weights": {"accuracy": 1.0},
    },
    "grpo_care_7b": {
        "model.path": "Qwen/Qwen2.5-VL-7B-Instruct", "algorithm.name": "care",
        "algorithm.care.ema_decay": 0.995, "algorithm.care.ema_update_every": 10, "algorithm.care.bonus_coef": 0.5,
        "algorithm.care.confidence_upper_bound": 0.95, "algorithm.care.margin": 0.0,
        "algorithm.care.accuracy_threshold": 0.1, "algorithm.care.group_scope": "group",
        "algorithm.adv_eps": 1e-4, "algorithm.kl_coef": 0.0, "algorithm.loss_agg": "seq-mean-token-mean",
        "rollout.n": 8, "rollout.temperature": 1.0, "rollout.top_p": 0.95, "rollout.max_new_tokens": 768,
        "data.max_prompt_length": 16384, "data.rollout_batch_size": 4, "learner.mini_batch_size": 4,
        "learner.lr": 1e-6, "learner.weight_decay": 1e-2, "learner.grad_clip": 5.0,
        "model.max_pixels": 401408, "trainer.total_steps": 1500, "data.dynamic_sampling": False,
        "reward.weights": {"accuracy": 1.0, "format": 1.0},
    },
    "vogue_7b": {**VOGUE_COMMON, "algorithm.vogue.mode": "code", "algorithm.vogue.noise_std": 0.2,
                 "data.rollout_batch_size": 512, "reward.weights": {"accuracy": 1.0}},
    "vogue_paper_7b": {**VOGUE_COMMON, "algorithm.vogue.mode": "paper", "algorithm.vogue.noise_std": 0.4,
                       "data.rollout_batch_size": 256, "reward.weights": {"format": 0.1, "accuracy": 0.9}},
}


def _get(cfg: Config, path: str) -> Any:
    if path == "reward.weights":  # sub-score key -> weight of the default function set
        return {(f.key or f.name): f.weight for f in cfg.reward.functions}
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_paper_experiment_matches_the_authors(name: str) -> None:
    cfg = _load(name)
    wrong = {path: (_get(cfg, path), want) for path, want in PAPER_SPECS[name].items()
             if _get(cfg, path) != (pytest.approx(want) if isinstance(want, float) else want)}
    assert not wrong, f"{name}: (got, expected) {wrong}"
    assert cfg.reward.accuracy_key == "accuracy"


def test_every_paper_experiment_is_checked() -> None:
    gpu = {n for n in EXPERIMENTS if _is_gpu(compose([f"experiment={n}"]))}
    assert gpu - {"grpo_qwen2_5_vl_7b", "grpo_qwen2_5_vl_3b_1gpu", "grpo_qwen2_5_vl_7b_colocated"} == set(PAPER_SPECS)


@pytest.mark.parametrize("name,algorithm", [
    ("papo_tiny_cpu", "papo"), ("vppo_tiny_cpu", "vppo"), ("care_tiny_cpu", "care"),
    ("vogue_tiny_cpu", "vogue"), ("papo_vppo_tiny_cpu", "papo+vppo"), ("grpo_tiny_cpu", "grpo"),
])
def test_tiny_cpu_variant_of_each_family(name: str, algorithm: str) -> None:
    cfg = _load(name)
    assert cfg.algorithm.name == algorithm
    assert cfg.model.dtype == "float32" and cfg.rollout.num_engines == 1 and cfg.learner.num_ranks == 2
    assert cfg.data.train_files == ("artifacts/easy_vqa/train_color.jsonl",)
    assert 0 < cfg.trainer.total_steps <= 30
    # The same step as the CPU demo, so timings compare: 16 prompts x 8 samples.
    assert (cfg.data.rollout_batch_size, cfg.rollout.n) == (16, 8)


def test_gpu_experiment_batches_divide_over_the_ranks() -> None:
    """The authors' global batch splits evenly over our 4 learner ranks in whole micro-batches,
    with whole optimizer steps per rollout batch (validate checks this too; spelled out here)."""
    for name in PAPER_SPECS:
        cfg = _load(name)
        d, r, lc = cfg.data, cfg.rollout, cfg.learner
        assert d.rollout_batch_size % lc.mini_batch_size == 0, name
        assert (lc.mini_batch_size * r.n) % (lc.num_ranks * lc.micro_batch_size) == 0, name
