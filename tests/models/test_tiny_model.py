"""The tiny Qwen2.5-VL: deterministic on every CPU, loadable by path, processor and template as for
Qwen; the shipped warm-started build and setup's copy of it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from rl_vlm import cli
from rl_vlm.data.prompt import render_prompt
from rl_vlm.models.tiny import (
    REBUILD_SEED,
    SHIPPED_DIR,
    SUMS_FILE,
    WARM_START_STEPS,
    ShippedModelError,
    install_shipped,
    read_sums,
    verify_sums,
)

# The random-init model (seed 0) and the shipped warm-started one. Both are the same bytes on every
# CPU with the locked libraries (numpy-drawn init; shipped files). A change to the tokenizer corpus,
# the config, the init scheme or numpy/transformers moves the first; rebuilding the asset
# (`rl-vlm build-tiny-model --out rl_vlm/models/assets/tiny-qwen2.5-vl`) moves the second.
RANDOM_INIT_SHA256 = "f4216288081cefff6e36c8ac89fda5c28b0aaac69f0dd9df6451c6c60e3910c6"
SHIPPED_MODEL_SHA256 = "8f0719c5c306bf7242c983f32c6c4b2ba84539625ca5fd51e0aea3c5038cfb0f"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic_in_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rl_vlm.models.tiny import build_tiny_model

    a = load_file(str(tiny_model_dir / "model.safetensors"))
    torch.manual_seed(1234)  # the init must not read torch's generator (its CPU kernels vary by ISA)
    b = load_file(str(build_tiny_model(tmp_path / "same", seed=0) / "model.safetensors"))
    c = load_file(str(build_tiny_model(tmp_path / "other", seed=1) / "model.safetensors"))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (tmp_path / "same" / "tokenizer.json").read_bytes()


def test_loads_by_path_with_processor_and_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    text = render_prompt(proc, "what color is the shape?", 1, "think_answer")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>what color is the shape? Think step by step inside "
                    "<think></think> tags, then give the final answer inside <answer></answer> tags.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    img = Image.new("RGB", (112, 112), "red")
    enc = proc(text=[text], images=[img], return_tensors="pt")
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((enc["input_ids"] == pad).sum()) == 8 * 8 // 4
    assert torch.equal(enc["mm_token_type_ids"], (enc["input_ids"] == pad).int())  # what the learner builds
    out = model(**enc)
    assert out.logits.shape == (1, enc["input_ids"].shape[1], model.config.text_config.vocab_size)
    # head_dim 64: the size vLLM's CPU attention kernels accept.
    tc = model.config.text_config
    assert tc.hidden_size // tc.num_attention_heads == 64
    assert proc.tokenizer.eos_token == "<|im_end|>"


def test_random_init_is_pinned(tiny_model_dir: Path) -> None:
    assert _sha256(tiny_model_dir / "model.safetensors") == RANDOM_INIT_SHA256


def test_random_init_follows_hf_scheme(tiny_model_dir: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        module, p = modules[name.rsplit(".", 1)[0]], p.detach()
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "RMSNorm" in type(module).__name__:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            values = p.flatten()
            assert abs(float(values.std()) - 0.02) < 0.02 * 0.1 and abs(float(values.mean())) < 0.002, name
    emb = model.model.language_model.embed_tokens
    assert emb.padding_idx is not None and torch.count_nonzero(emb.weight[emb.padding_idx]) == 0


def test_shipped_model_matches_its_sums_and_the_pin() -> None:
    verify_sums(SHIPPED_DIR)
    sums = read_sums(SHIPPED_DIR)
    files = {f.name for f in SHIPPED_DIR.iterdir() if f.is_file()}
    assert files == {*sums, SUMS_FILE}
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "build_info.json"} <= files
    assert sums["model.safetensors"] == SHIPPED_MODEL_SHA256
    info = json.loads((SHIPPED_DIR / "build_info.json").read_text())
    assert info["seed"] == 0 and "c27f519" in info["recipe"] and info["warm_start"]["steps"] == WARM_START_STEPS
    assert cli.REBUILD_SEED == REBUILD_SEED  # what `setup-cpu-demo --rebuild` and `build-tiny-model` build
    assert info["machine"]["cpu"] and info["machine"]["torch_cpu_capability"]


def test_setup_copy_is_byte_identical_and_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "artifacts" / "tiny-qwen2.5-vl"
    assert install_shipped(out) is True
    names = sorted(f.name for f in SHIPPED_DIR.iterdir() if f.is_file())
    assert sorted(f.name for f in out.iterdir()) == names
    assert all((out / n).read_bytes() == (SHIPPED_DIR / n).read_bytes() for n in names)
    assert install_shipped(out) is False  # already there: nothing copied
    (out / "config.json").write_text("{}")  # a stale or edited copy is replaced, not trusted
    (out / "stray.bin").write_bytes(b"x")
    assert install_shipped(out) is True
    assert sorted(f.name for f in out.iterdir()) == names
    assert (out / "config.json").read_bytes() == (SHIPPED_DIR / "config.json").read_bytes()


def test_damaged_shipped_files_fail_with_one_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, src)
    (src / "model.safetensors").write_bytes(b"truncated")
    (src / "tokenizer.json").unlink()
    with pytest.raises(ShippedModelError, match=r"model\.safetensors \(sha256 differs\).*tokenizer\.json \(missing\)"):
        install_shipped(tmp_path / "out", src=src)
    assert not (tmp_path / "out").exists()
