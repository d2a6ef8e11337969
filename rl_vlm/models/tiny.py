"""A tiny random-weight Qwen2.5-VL that transformers, vLLM and DeepSpeed all load by path.

Shapes follow what vLLM's CPU kernels accept (head_dim 64; see ``shared/notes/cpu-stack.md``):
text hidden 128, 2 layers, 2 query heads of 64, 1 KV head, mrope sections [8, 12, 12]; vision
depth 2, hidden 64. The tokenizer is a byte-level BPE trained on easy-VQA text with Qwen's
special tokens and chat template, so prompts render exactly as for real Qwen2.5-VL checkpoints.
The random-init build is deterministic in ``seed`` and the same bytes on every CPU (weights drawn
by numpy, :mod:`rl_vlm.models.init`). The warm start is deterministic per CPU type only (its float
kernels follow the instruction set), so its result is shipped in :data:`SHIPPED_DIR` and copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL's chat template, restricted to what the tiny model needs (text + image items).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


CORPUS_TEMPLATES = ("think_answer", "plain")


def tokenizer_corpus() -> list[str]:
    import easy_vqa

    from rl_vlm.data.prompt import TEMPLATES, sft_target

    questions, answers, _ = easy_vqa.get_train_questions()
    # A fixed list, not every template: adding a prompt template must not change the tokenizer
    # (and with it the tiny model and every measured figure).
    extra = [TEMPLATES[name].format(problem="") for name in CORPUS_TEMPLATES]
    extra += [sft_target(a) for a in easy_vqa.get_answers()]
    extra += ["You are a helpful assistant.", "system", "user", "assistant"]
    return questions + answers + extra


def build_tokenizer(vocab_size: int = 1024):  # -> PreTrainedTokenizerFast
    """Byte-level BPE with Qwen's special tokens; deterministic (BPE training is)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return fast


def tiny_config(tokenizer):  # -> Qwen2_5_VLConfig
    from transformers import Qwen2_5_VLConfig

    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}, tie_word_embeddings=False,
            eos_token_id=eos, pad_token_id=pad, bos_token_id=pad, dtype="float32"),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                           window_size=112, dtype="float32"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        # The sub-configs' dtype is what a save after loading writes (the shipped model's
        # config.json has it): a random-init build then has the warm start's config byte for
        # byte, and a shared system's engines serve both (SharedPools keys on these files).
        # Extra config attributes go through the config dataclass's **kwargs, which its
        # generated signature leaves out.
        eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=False)  # type: ignore[call-arg]


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write model weights, config, generation config and a full processor to ``out_dir``."""
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
        Qwen2VLVideoProcessor,
    )

    from rl_vlm.models.init import deterministic_init_

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    # The constructor's own init draws from torch's CPU-dependent normal kernel; overwrite it all.
    model = deterministic_init_(Qwen2_5_VLForConditionalGeneration(config), seed)
    eos, pad = config.text_config.eos_token_id, config.text_config.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    # Saving/loading fails without a video processor, even for an image-only model.
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
                                    tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    info = {"seed": seed, "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "warm_start": None}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return out


WARM_START_STEPS = 300
# The seed a rebuild uses (build-tiny-model, setup-cpu-demo --rebuild). Not 0: the warm start is
# on a knife-edge per seed, and with the numpy-drawn init seed 0's stays at chance on colour.
REBUILD_SEED = 1

# The warm-started model, built once and shipped: the warm start's float kernels differ by
# instruction set (AVX2 vs AVX-512/AMX), so a build is a different model on each CPU type; copying
# these files gives every machine the same bytes. The shipped build is the previous recipe's
# (torch's own init, seed 0; its build_info.json says so), not a rebuild's: GRPO raises its greedy
# held-out accuracy, while a rebuild's seed-1 model, warm-started further, lost greedy accuracy
# under GRPO at every lr tried.
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "tiny-qwen2.5-vl"
SUMS_FILE = "SHA256SUMS"


class ShippedModelError(RuntimeError):
    """The shipped model's files do not match their ``SHA256SUMS``."""


def build_machine() -> dict[str, object]:
    """The CPU a build ran on (model name and the instruction sets that pick torch's kernels) and
    the libraries that ran it: a warm start is reproducible only on the same kind."""
    import importlib.metadata as md
    import platform

    cpu, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
                       "amx_bf16") if f in flags]
    return {"cpu": cpu, "isa": isa, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": {d: md.version(d) for d in ("torch", "transformers", "numpy", "tokenizers")}}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sums(model_dir: str | Path) -> Path:
    """``SHA256SUMS`` (``sha256sum -c`` format) over every file in ``model_dir``."""
    d = Path(model_dir)
    files = sorted(f.name for f in d.iterdir() if f.is_file() and f.name != SUMS_FILE)
    out = d / SUMS_FILE
    out.write_text("".join(f"{_sha256(d / name)}  {name}\n" for name in files))
    return out


def read_sums(model_dir: str | Path) -> dict[str, str]:
    """File name -> sha256 from ``model_dir``'s ``SHA256SUMS``."""
    sums: dict[str, str] = {}
    for line in (Path(model_dir) / SUMS_FILE).read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def verify_sums(model_dir: str | Path) -> None:
    """Raise :class:`ShippedModelError` naming every file that is missing or differs from
    ``SHA256SUMS``."""
    d = Path(model_dir)
    if not (d / SUMS_FILE).is_file():
        raise ShippedModelError(f"{d / SUMS_FILE} is missing")
    bad = [f"{name} ({'missing' if not (d / name).is_file() else 'sha256 differs'})"
           for name, digest in read_sums(d).items() if not (d / name).is_file() or _sha256(d / name) != digest]
    if bad:
        raise ShippedModelError(f"{d}: files do not match {SUMS_FILE}: {', '.join(bad)}")


def install_shipped(out_dir: str | Path, src: str | Path = SHIPPED_DIR) -> bool:
    """Copy the shipped model into ``out_dir`` after checking its sums (byte-identical files);
    returns False when ``out_dir`` already held exactly these files."""
    import shutil

    src, out = Path(src), Path(out_dir)
    verify_sums(src)
    want = read_sums(src)
    if (out / SUMS_FILE).is_file() and read_sums(out) == want and \
            sorted(f.name for f in out.iterdir() if f.is_file()) == sorted([*want, SUMS_FILE]):
        try:
            verify_sums(out)
            return False
        except ShippedModelError:
            pass
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in [*want, SUMS_FILE]:
        shutil.copyfile(src / name, out / name)
    verify_sums(out)
    return True


def build_and_warm_start(out_dir: str | Path, seed: int = REBUILD_SEED,
                         warm_start_steps: int = WARM_START_STEPS) -> Path:
    """:func:`build_tiny_model`, then a short supervised pass so the policy follows the format;
    writes ``SHA256SUMS``. The warm start's result depends on the CPU type (``build_info.json``
    records it): :data:`SHIPPED_DIR` holds the one every machine uses."""
    from rl_vlm.models.warmstart import warm_start

    out = build_tiny_model(out_dir, seed)
    info = json.loads((out / "build_info.json").read_text())
    if warm_start_steps > 0:
        info["warm_start"] = warm_start(out, steps=warm_start_steps, seed=seed)
    info["machine"] = build_machine()
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_sums(out)
    return out
