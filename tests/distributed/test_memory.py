"""The fits-in-memory arithmetic of colocated layouts (rl_vlm.distributed.memory), on CPU.

Parameter counts against transformers' own Qwen2.5-VL (random weights, meta device) and the
published totals; LoRA adapter counts against PEFT; every memory term on a hand-computed toy
shape; the two colocated experiments compose, validate and fit with margin; layouts that do not
fit are refused naming the key, and each change the message suggests does fit.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rl_vlm.compose import compose
from rl_vlm.config import (
    ClusterConfig,
    Config,
    ConfigError,
    DataConfig,
    LearnerConfig,
    LoraConfig,
    ModelConfig,
    RolloutConfig,
)
from rl_vlm.distributed.memory import (
    GIB,
    activation_bytes,
    check_colocated_fits,
    estimate_colocated_memory,
    lora_params,
    trainable_params,
)
from rl_vlm.models.shape import PUBLISHED_SHAPES, ModelShape, model_shape, shape_from_hf_config
from rl_vlm.validation import validate

if TYPE_CHECKING:
    import torch
    from transformers import Qwen2_5_VLConfig

TINY_PATH = "artifacts/tiny-qwen2.5-vl"


# ------------------------------------------------------------------------------ parameter counts
def _hf_config(tied: bool, kv_heads: int = 2) -> Qwen2_5_VLConfig:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=tied),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1]),
        tie_word_embeddings=tied)  # type: ignore[call-arg]


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("tied,kv_heads", [(False, 2), (True, 1), (False, 4)])
def test_parameter_counts_match_transformers(tied: bool, kv_heads: int, tmp_path: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = _hf_config(tied, kv_heads)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    config.save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))
    assert shape is not None and shape.tied_embeddings == tied and shape.kv_heads == kv_heads
    text = _numel(model.model.language_model) + (0 if tied else model.lm_head.weight.numel())
    assert shape.vision_params == _numel(model.model.visual)
    assert shape.text_params == text
    assert shape.total_params == _numel(model)  # parameters() counts a tied head once


def test_tiny_model_shape_from_its_config() -> None:
    shape = model_shape(TINY_PATH)
    info = json.loads((Path(TINY_PATH) / "build_info.json").read_text())
    assert shape is not None and shape.total_params == info["parameters"]
    assert (shape.hidden, shape.layers, shape.vocab, shape.vision_hidden, shape.vision_out) == (128, 2, 423, 64, 128)


@pytest.mark.parametrize("hub_id,published", [
    ("Qwen/Qwen2.5-VL-3B-Instruct", 3.75e9), ("Qwen/Qwen2.5-VL-7B-Instruct", 8.29e9),
    ("Qwen/Qwen2.5-VL-32B-Instruct", 33.5e9), ("Qwen/Qwen2.5-VL-72B-Instruct", 73.4e9),
])
def test_published_totals(hub_id: str, published: float) -> None:
    shape = model_shape(hub_id)
    assert shape is PUBLISHED_SHAPES[hub_id]
    assert abs(shape.total_params - published) / published < 0.005


def test_seven_b_counts_exactly() -> None:
    """Qwen2.5-VL-7B by hand: 28 layers of q (3584^2 + 3584), k, v (3584 x 512 + 512), o (3584^2),
    MLP 3 x 3584 x 18944, two norms; embedding and untied head 152064 x 3584; the ViT as in
    transformers (patch embed 3 x 2 x 14 x 14 x 1280, 32 blocks, the merger)."""
    s = PUBLISHED_SHAPES["Qwen/Qwen2.5-VL-7B-Instruct"]
    layer = (3584 * 3584 + 3584) + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert s.text_params == 2 * 152064 * 3584 + 28 * layer + 3584 == 7_615_616_512
    block = (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + 2 * (1280 * 3420 + 3420) + (3420 * 1280 + 1280) + 2 * 1280
    merger = 1280 + (5120 * 5120 + 5120) + (5120 * 3584 + 3584)
    assert s.vision_params == 3 * 2 * 14 * 14 * 1280 + 32 * block + merger == 676_550_144


def test_model_shape_unknown_and_malformed(tmp_path: Path) -> None:
    assert model_shape("Qwen/Qwen2-VL-7B-Instruct") is None  # not listed
    assert model_shape(str(tmp_path / "missing")) is None
    assert model_shape(str(tmp_path)) is None  # a directory without config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert model_shape(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "hidden_size": "wide"}))
    with pytest.raises(ConfigError, match=r"^model.path: .*hidden_size"):
        model_shape(str(tmp_path))


def test_published_style_config_parses_top_level_text_fields() -> None:
    """The hub's config.json keeps the text fields at the top level and the ViT in vision_config."""
    hf: dict[str, object] = {
        "model_type": "qwen2_5_vl", "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2}}
    assert shape_from_hf_config(hf) == PUBLISHED_SHAPES["Qwen/Qwen2.5-VL-3B-Instruct"]


# ------------------------------------------------------------------------------ LoRA
def test_lora_params_by_hand() -> None:
    s = PUBLISHED_SHAPES["Qwen/Qwen2.5-VL-7B-Instruct"]
    per_layer = (3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 2 * (3584 + 18944) + (18944 + 3584)
    assert lora_params(s, LoraConfig(rank=16)) == 16 * 28 * per_layer
    assert lora_params(s, LoraConfig(rank=8, target_modules=("q_proj", "v_proj"))) == 8 * 28 * (7168 + 4096)
    assert lora_params(s, LoraConfig(rank=0)) == 0
    vit = (1280 + 3840) + (1280 + 1280) + 2 * (1280 + 3420) + (3420 + 1280)
    assert lora_params(s, LoraConfig(rank=4, vision_tower=True)) == 4 * (28 * per_layer + 32 * vit)
    # Only q/v named: the ViT's fused qkv counts, its proj (o_proj) and MLP do not.
    assert lora_params(s, LoraConfig(rank=2, target_modules=("q_proj", "v_proj"), vision_tower=True)) == \
        2 * (28 * (7168 + 4096) + 32 * (1280 + 3840))


@pytest.mark.parametrize("lora", [
    LoraConfig(rank=4), LoraConfig(rank=8, target_modules=("q_proj", "o_proj", "down_proj"), vision_tower=True),
    LoraConfig(rank=2, vision_tower=True),
])
def test_lora_params_match_peft(lora: LoraConfig, tmp_path: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rl_vlm.models.lora import wrap_policy

    config = _hf_config(tied=False)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    config.save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))
    assert shape is not None
    peft_model = wrap_policy(model, lora, str(tmp_path))
    assert lora_params(shape, lora) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------ the estimate, by hand
TOY = ModelShape(hidden=8, layers=2, intermediate=16, vocab=100, heads=2, kv_heads=1, tied_embeddings=False,
                 vision_hidden=4, vision_depth=1, vision_intermediate=8, vision_out=8)


def _toy_cfg(**learner: object) -> Config:
    lc = dataclasses.replace(LearnerConfig(num_ranks=2, micro_batch_size=1, mini_batch_size=2,
                                           logprob_chunk_size=4), **learner)
    return Config(model=ModelConfig(dtype="bfloat16", gradient_checkpointing=True),
                  data=DataConfig(max_prompt_length=6), rollout=RolloutConfig(max_new_tokens=2, n=2,
                                                                               gpu_memory_utilization=0.5),
                  learner=lc, cluster=ClusterConfig(device="gpu", colocate=True, gpu_memory_gib=1.0))


def test_toy_parameter_counts() -> None:
    # layer: q 8*8+8, k and v 8*4+4 each, o 8*8, MLP 3*8*16, norms 2*8
    assert TOY.text_layer_params == 72 + 72 + 64 + 384 + 16 == 608
    assert TOY.text_params == 800 + 2 * 608 + 8 + 800 == 2824
    # patch embed 3*2*14*14*4; block: qkv 4*12+12, proj 4*4+4, gate/up 2*(4*8+8), down 8*4+4, norms 8;
    # merger (merge 2: 16 wide): norm 4, 16*16+16, 16*8+8
    assert TOY.vision_params == 4704 + (60 + 20 + 80 + 36 + 8) + (4 + 272 + 136) == 5320
    assert TOY.total_params == 8144


def test_estimate_by_hand() -> None:
    e = estimate_colocated_memory(_toy_cfg(), TOY, needs_reference=True)
    assert e.gpu == GIB
    assert e.weights == 2 * 8144 // 2  # bf16, ZeRO-3 over 2 ranks
    assert e.gradients == 8144
    assert e.optimizer == 12 * 8144 // 2
    assert e.frozen_copies == 8144  # the KL reference
    assert e.overhead == 2 * GIB
    assert e.engine_pool == GIB // 2 and e.engine_sleeping == int(0.1 * (GIB // 2))
    # gathered: the whole (tiny) model in bf16, plus a reduce bucket of every gradient
    assert e.gathered == 2 * 8144 + 2 * 8144
    # 1 x (6 + 2) tokens; layer: 8 * 2 * (12*8 + 3*4 + 4*16); checkpointed inputs (2+1) * 8 * 8 * 2;
    # ViT: 1 * 6 * 4 = 24 patches, block 24 * 2 * (13*4 + 4*8), inputs (1+1) * 24 * 4 * 2
    assert e.tokens == 8
    text_peak = 3 * 8 * 8 * 2 + 2 * (8 * 2 * 172)
    assert (text_peak, 24 * 2 * 84) == (5888, 4032)
    assert e.activations == 384 + max(5888, 2 * 4032) == 8448
    assert e.logprob_chunk == 6 * 4 * 4 * 100
    assert e.optimizer_step == 4 * (8144 // 2)
    assert e.resident == 8144 + 8144 + 48864 + 8144
    assert e.rollout == e.resident + 2 * GIB + GIB // 2
    assert e.update == e.resident + 2 * GIB + e.engine_sleeping + max(32576 + 8448 + 9600, 16288)
    # engine: bf16 weights, KV of one 8-token sequence (2 x 2 layers x 1 head x 4 dims x 2 bytes), allowance
    assert e.engine_needs == 2 * 8144 + 8 * 32 + 2 * GIB


def test_estimate_offload_lora_and_stages() -> None:
    off = estimate_colocated_memory(_toy_cfg(offload_optimizer=True, offload_params=True), TOY, needs_reference=True)
    assert (off.weights, off.optimizer, off.optimizer_step, off.frozen_copies) == (0, 0, 0, 0)
    assert off.gradients == 8144
    stage1 = estimate_colocated_memory(_toy_cfg(zero_stage=1), TOY, needs_reference=False)
    assert (stage1.weights, stage1.gradients, stage1.optimizer) == (2 * 8144, 2 * 8144, 12 * 8144 // 2)
    assert stage1.gathered == 2 * 8144  # no ZeRO-3 gathering, the reduce bucket only
    lora = LoraConfig(rank=2, target_modules=("q_proj",))
    cfg = _toy_cfg()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora=lora))
    adapters = 2 * 2 * (8 + 8)
    assert lora_params(TOY, lora) == adapters == trainable_params(cfg, TOY)
    e = estimate_colocated_memory(cfg, TOY, needs_reference=True, needs_ema_reference=True)
    assert e.weights == 2 * (8144 + adapters) // 2
    assert (e.gradients, e.optimizer) == (2 * adapters // 2, 12 * adapters // 2)
    assert e.frozen_copies == 2 * adapters // 2  # no reference copy; the EMA of the adapter
    # A frozen ViT keeps no activations: one block's forward, before the language model runs
    assert activation_bytes(cfg, TOY) == max(5888, 4032)
    frozen = dataclasses.replace(_toy_cfg(), model=dataclasses.replace(_toy_cfg().model, freeze_vision_tower=True))
    assert trainable_params(frozen, TOY) == 2824
    no_ckpt = dataclasses.replace(_toy_cfg(), model=dataclasses.replace(_toy_cfg().model, gradient_checkpointing=False))
    # every layer's activations and the final hidden states, plus one layer's gradients; the ViT's block
    assert activation_bytes(no_ckpt, TOY) == 4032 + (2 * 2752 + 8 * 8 * 2 + 2752)


def test_describe_is_a_table_in_gib() -> None:
    e = estimate_colocated_memory(compose(["experiment=grpo_qwen2_5_vl_3b_1gpu"]),
                                  PUBLISHED_SHAPES["Qwen/Qwen2.5-VL-3B-Instruct"], needs_reference=False)
    text = e.describe()
    lines = text.splitlines()
    assert lines[0].split()[-2:] == ["rollout", "update"] and "80.0" in lines[0]
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:] == [f"{e.rollout / GIB:.1f}", f"{e.update / GIB:.1f}"]
    assert "optimizer state" not in text  # offloaded: the row is left out
    assert re.search(r"vLLM pool\s+40\.0\s+-", text)


# ------------------------------------------------------------------------------ the experiments
EXPERIMENTS = {"grpo_qwen2_5_vl_3b_1gpu": (1, "Qwen/Qwen2.5-VL-3B-Instruct"),
               "grpo_qwen2_5_vl_7b_colocated": (8, "Qwen/Qwen2.5-VL-7B-Instruct")}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_colocated_experiment_composes_validates_and_fits(name: str) -> None:
    gpus, path = EXPERIMENTS[name]
    cfg = compose([f"experiment={name}", "cluster.device=gpu"])
    c, r, lc = cfg.cluster, cfg.rollout, cfg.learner
    assert c.colocate and (c.num_nodes * c.gpus_per_node, r.num_engines, lc.num_ranks) == (gpus, gpus, gpus)
    assert r.tensor_parallel_size == 1 and cfg.model.path == path and cfg.model.gradient_checkpointing
    validate(cfg, check_paths=False)  # the GPU branch runs check_colocated_fits itself
    shape = model_shape(cfg.model.path)
    assert shape is not None
    check_colocated_fits(cfg, shape, needs_reference=False)
    e = estimate_colocated_memory(cfg, shape, needs_reference=False)
    # With margin: at least 15 % of the GPU free in both phases, and the engine's pool at least
    # twice what the engine needs (weights, one sequence's KV cache, activations).
    assert e.gpu - e.rollout > 0.15 * e.gpu and e.gpu - e.update > 0.15 * e.gpu
    assert e.engine_pool > 2 * e.engine_needs


def test_single_gpu_cluster_group() -> None:
    cfg = compose(["cluster=single_gpu"])
    c = cfg.cluster
    assert (c.device, c.colocate, c.num_nodes, c.gpus_per_node) == ("gpu", True, 1, 1)
    assert (cfg.rollout.num_engines, cfg.learner.num_ranks) == (1, 1)
    assert 0 < cfg.rollout.gpu_memory_utilization <= 0.6


# ------------------------------------------------------------------------------ refusals
def _refusal(overrides: list[str]) -> tuple[Config, ModelShape, str]:
    cfg = compose(["experiment=grpo_qwen2_5_vl_3b_1gpu", *overrides])
    shape = model_shape(cfg.model.path)
    assert shape is not None
    with pytest.raises(ConfigError) as info:
        check_colocated_fits(cfg, shape, needs_reference=False)
    msg = str(info.value)
    assert "\n" not in msg
    return cfg, shape, msg


def _apply(cfg: Config, override: str) -> Config:
    """``cfg`` with one ``section.key=value`` override (as the message spells it)."""
    path, value = override.split("=")
    parts = path.split(".")
    parsed: object = {"true": True, "false": False}.get(value, value)
    if isinstance(parsed, str):
        parsed = float(parsed) if "." in parsed else int(parsed)
    def put(node: object, keys: list[str]) -> object:
        if len(keys) == 1:
            return dataclasses.replace(node, **{keys[0]: parsed})  # type: ignore[type-var]
        return dataclasses.replace(node, **{keys[0]: put(getattr(node, keys[0]), keys[1:])})  # type: ignore[type-var]
    out = put(cfg, parts)
    assert isinstance(out, Config)
    return out


def _suggested(msg: str) -> list[str]:
    return re.findall(r"\b((?:learner|model|rollout)\.[a-z_.]+=[\w.]+)", msg)


def test_seven_b_full_fine_tune_on_one_gpu_is_refused() -> None:
    cfg, shape, msg = _refusal(["model=qwen2_5_vl_7b", "learner.offload_optimizer=false"])
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert msg.startswith("rollout.gpu_memory_utilization: 0.5 of 80 GiB leaves 40.0 GiB, but learner rank 0 "
                          "keeps 123.6 GiB resident (weights 15.4, gradients 15.4, optimizer 92.7)")
    fixes = _suggested(msg)
    assert fixes[0] == "learner.offload_optimizer=true" and "model.lora.rank=16" in fixes
    for fix in fixes:  # every suggestion fits on its own
        check_colocated_fits(_apply(cfg, fix), shape, needs_reference=False)


def test_too_high_utilisation_is_lowered() -> None:
    cfg, shape, msg = _refusal(["rollout.gpu_memory_utilization=0.9"])
    lowered = re.search(r"lower it to (0\.\d+)", msg)
    assert msg.startswith("rollout.gpu_memory_utilization: 0.9 of 80 GiB") and lowered
    fixed = _apply(cfg, f"rollout.gpu_memory_utilization={lowered.group(1)}")
    check_colocated_fits(fixed, shape, needs_reference=False)
    with pytest.raises(ConfigError):  # the rounding is down, to the largest hundredth that fits
        check_colocated_fits(_apply(cfg, f"rollout.gpu_memory_utilization={float(lowered.group(1)) + 0.02:.2f}"),
                             shape, needs_reference=False)


def test_update_without_checkpointing_names_it() -> None:
    cfg, shape, msg = _refusal(["model.gradient_checkpointing=false"])
    assert msg.startswith("model.gradient_checkpointing: the update needs ")
    assert "activations" in msg and "for 16384 tokens" in msg
    for fix in _suggested(msg):
        check_colocated_fits(_apply(cfg, fix), shape, needs_reference=False)


def test_update_with_a_huge_micro_batch_names_it() -> None:
    cfg, shape, msg = _refusal(["learner.micro_batch_size=80"])  # all 80 sequences of the rank at once
    assert msg.startswith("learner.micro_batch_size: the update needs ")
    micro = next(f for f in _suggested(msg) if f.startswith("learner.micro_batch_size="))
    size = int(micro.split("=")[1])
    assert 4 <= size < 80 and 80 % size == 0
    check_colocated_fits(_apply(cfg, micro), shape, needs_reference=False)


def test_a_token_budget_sizes_the_activations() -> None:
    # 8 tokens, as micro-batch 1 x (6 + 2); the ViT may then see 8 * 4 = 32 patches (any token a prompt's).
    e = estimate_colocated_memory(_toy_cfg(max_tokens_per_micro_batch=8), TOY, needs_reference=True)
    assert e.tokens == 8
    text_peak = 3 * 8 * 8 * 2 + 2 * (8 * 2 * 172)
    # ViT inputs (1+1) * 32 * 4 * 2, block 32 * 2 * (13*4 + 4*8)
    assert e.activations == 512 + max(text_peak, 2 * 32 * 2 * 84) == 11264


def test_update_with_a_huge_token_budget_names_it() -> None:
    cfg, shape, msg = _refusal(["learner.max_tokens_per_micro_batch=327680"])  # 80 sequences of 4 k tokens
    assert msg.startswith("learner.max_tokens_per_micro_batch: the update needs ")
    fix = next(f for f in _suggested(msg) if f.startswith("learner.max_tokens_per_micro_batch="))
    assert 6144 <= int(fix.split("=")[1]) < 327680
    check_colocated_fits(_apply(cfg, fix), shape, needs_reference=False)


def test_pool_too_small_for_the_engine() -> None:
    cfg, shape, msg = _refusal(["rollout.gpu_memory_utilization=0.1"])
    assert msg.startswith("rollout.gpu_memory_utilization: 0.1 of 80 GiB = 8.0 GiB cannot hold the engine's ")
    raised = re.search(r"raise it to (0\.\d+)", msg)
    assert raised
    check_colocated_fits(_apply(cfg, f"rollout.gpu_memory_utilization={raised.group(1)}"), shape,
                         needs_reference=False)


def test_reference_model_counts_unless_lora() -> None:
    cfg = compose(["experiment=grpo_qwen2_5_vl_7b_colocated"])
    shape = PUBLISHED_SHAPES["Qwen/Qwen2.5-VL-7B-Instruct"]
    plain = estimate_colocated_memory(cfg, shape, needs_reference=False)
    ref = estimate_colocated_memory(cfg, shape, needs_reference=True)
    assert ref.resident - plain.resident == 2 * shape.total_params // 8
    lora = _apply(cfg, "model.lora.rank=16")
    assert estimate_colocated_memory(lora, shape, needs_reference=True).frozen_copies == 0
