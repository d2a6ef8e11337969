"""Learner memory and speed of one micro-batch's forward + backward against sequence length T, at
Qwen2.5-VL's vocabulary (V = 151,936), with every position's logits ("before") and with the
learner's chunked log-probs ("after", rl_vlm/distributed/workers/logprobs.py).

The model is a narrow random-weight Qwen2.5-VL text tower built in-process (no hub, no files):
``--hidden`` wide, ``--layers`` deep, the real vocabulary, untied embeddings (as the 7B). Each
micro-batch holds ``--micro-batch`` sequences of T random tokens whose last half is the answer
(response mask 1). Per micro-batch, like ``Learner.update`` with GRPO (no KL, the entropy as a
metric): forward, per-token log-probs and entropies of the answer, the GRPO loss through
``Algorithm.loss``, backward. The variants:

    before     today's full-logits path: out.logits / temperature, token_logprobs, shifted_entropy
               (computed with a graph, then detached, as the update did)
    after      final hidden states, then the LM head + fp32 log-softmax on --chunk-size answer
               positions at a time, checkpointed; entropy without a graph
    trl        TRL's GRPOTrainer way, only when ``trl`` is importable: since TRL 1.x its fused LM
               head (``add_fused_lm_head``: the answer's positions only, tiled over tokens and
               vocabulary, log-probs + entropy); older TRL: logits_to_keep = answer + 1,
               / temperature, ``selective_log_softmax``, chunked ``entropy_from_logits`` under no_grad
    backbone   the model without its LM head (loss = the answer's hidden states summed): the floor
               every variant pays; "logits-related" = variant peak − this floor

Per point (variant, T), in a fresh process: one warm-up micro-batch (the gradient buffers then
exist; they are zeroed in place, never freed), ``--repeats`` timed ones (median; tokens/s counts
all n·T tokens) with glibc's default allocator, then one for memory.

Memory method (CPU; torch keeps no CPU allocator statistics): before the memory micro-batch glibc
is told to mmap every allocation above 128 KiB and to return freed memory at once (``mallopt``,
then ``malloc_trim``), so the resident set follows what torch holds; the kernel's resident-set
high-water mark is reset (``/proc/self/clear_refs`` ← 5) and read back after it (``VmHWM``):
peak extra = VmHWM − RSS just before the micro-batch. Where clear_refs is not writable, a thread
samples RSS (psutil) every millisecond instead (a lower bound; the method is recorded). A
"before" point that would need more than the free memory (estimated from its n·T·V) is skipped
and says so, rather than swapping or being OOM-killed. ``--smoke`` runs its points in this
process (its numbers are not isolated from one another).

    .venv/bin/python scripts/bench_memory.py                          # T = 512, 1k, 2k, 3k; micro-batch 2
    .venv/bin/python scripts/bench_memory.py --lengths 3072 --micro-batch 1
    .venv/bin/python scripts/bench_memory.py --smoke                  # T = 256, micro-batch 1 (< 60 s)

Writes ``<out>/results.json`` (default runs/bench/memory/) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, load, machine, median, write_json  # noqa: E402

VOCAB = 151_936
VARIANTS = ("before", "after", "trl", "backbone")
# Copies of the [n, T, V] fp32 logits the "before" path holds at its peak (logits, / temperature,
# log_softmax, the entropy's graph, their gradients), for the does-it-fit check only.
BEFORE_COPIES = 7


def trl_available() -> str | None:
    """None if TRL's log-prob helpers import here, else why not."""
    try:
        from trl.trainer.utils import selective_log_softmax  # noqa: F401
    except ImportError as e:
        return f"TRL is not installed ({e}); install requirements/bench.txt"
    return None


def trl_path() -> str:
    """Which of TRL's ways the ``trl`` variant runs (see the module docstring)."""
    try:
        from trl.trainer.utils import add_fused_lm_head  # noqa: F401
    except ImportError:
        return "logits_to_keep + selective_log_softmax"
    return "add_fused_lm_head"


# --------------------------------------------------------------------------------- memory
def _status_mib(key: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def strict_malloc() -> bool:
    """glibc: mmap every allocation above 128 KiB and give freed memory back at once (and now), so
    that RSS tracks what torch holds. False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 128 * 1024) == 1 and libc.mallopt(m_trim_threshold, 128 * 1024) == 1
    libc.malloc_trim(0)
    return ok


class PeakRSS:
    """Peak resident set size during a ``with`` block, in MiB above the RSS at its start."""

    def __enter__(self) -> PeakRSS:
        self._stop = threading.Event()
        self._peak = 0.0
        self._thread: threading.Thread | None = None
        try:
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.method = "VmHWM (clear_refs reset)"
        except OSError:
            import psutil

            self.method = "psutil RSS sampling, 1 ms"
            proc = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss / 2**20)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
        self.base = _status_mib("VmRSS")
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _status_mib("VmRSS"))
        else:
            peak = _status_mib("VmHWM")
        self.extra = peak - self.base


# --------------------------------------------------------------------------------- one point
def build_model(hidden: int, layers: int, seed: int) -> Any:
    """A random-weight Qwen2.5-VL of ``hidden`` × ``layers`` (head_dim 64) with the real vocabulary."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    heads = max(1, hidden // 64)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=32768,
                         rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1, pad_token_id=0),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=1, out_hidden_size=hidden),
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()  # eval: no dropout; grads still flow


def run_point(variant: str, T: int, a: argparse.Namespace) -> dict[str, Any]:
    """One variant at one length, in this (fresh) process: warm-up, then the measured micro-batches."""
    import torch

    from rl_vlm.algorithms import build_algorithm
    from rl_vlm.algorithms.base import LossInputs
    from rl_vlm.config import AlgorithmConfig
    from rl_vlm.distributed.workers.logprobs import (
        final_hidden_states,
        lm_head,
        sequence_logprobs,
        shifted_entropy,
        token_logprobs,
    )

    torch.set_num_threads(a.threads)
    model = build_model(a.hidden, a.layers, a.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    algorithm = build_algorithm(AlgorithmConfig())
    g = torch.Generator().manual_seed(a.seed)
    n, answer = a.micro_batch, T // 2
    ids = torch.randint(2, VOCAB, (n, T), generator=g)
    mask = torch.zeros(n, T)
    mask[:, T - answer:] = 1.0
    adv = torch.randn(n, 1, generator=g) * mask
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    fused = variant == "trl" and trl_path() == "add_fused_lm_head"
    if fused:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, temperature=a.temperature, outputs=("log_probs", "entropy"))

    def logprobs() -> tuple[torch.Tensor, torch.Tensor | None]:
        if variant == "before":
            logits = model(**inputs).logits / a.temperature
            return token_logprobs(logits, ids), shifted_entropy(logits)
        if variant == "after":
            hidden = final_hidden_states(model, **inputs)
            # The learner's rule: a fixed number of head calls for a micro-batch of full answers.
            calls = math.ceil(n * answer / a.chunk_size)
            return sequence_logprobs(hidden, ids, mask, lm_head(model), a.temperature, a.chunk_size, "value",
                                     calls)
        if variant == "trl" and fused:
            labels = ids.masked_fill(mask == 0, -100)
            out = model(**inputs, labels=labels, fused_lm_head=True)  # [n, T - 1], aligned to labels[:, 1:]
            pad = (1, 0)
            return (torch.nn.functional.pad(out.log_probs, pad),
                    torch.nn.functional.pad(out.entropy, pad).detach())
        if variant == "trl":
            from trl.trainer.utils import entropy_from_logits, selective_log_softmax

            logits = model(**inputs, logits_to_keep=answer + 1).logits[:, :-1] / a.temperature
            lp = selective_log_softmax(logits, ids[:, T - answer:])
            with torch.no_grad():
                ent = entropy_from_logits(logits)
            pad0 = torch.zeros(n, T - answer)
            return torch.cat([pad0, lp], 1), torch.cat([pad0, ent], 1)
        hidden = final_hidden_states(model, **inputs)  # backbone: no LM head at all
        return (hidden * mask[..., None]).sum(-1) * 1e-3, None

    def micro_batch() -> dict[str, float]:
        logp, ent = logprobs()
        inp = LossInputs(logprobs=logp, old_logprobs=logp.detach(), ref_logprobs=None, advantages=adv,
                         response_mask=mask, entropy=None if ent is None else ent.detach(),
                         num_tokens=float(mask.sum()), num_seqs=float(n), max_response_len=answer, step=1,
                         total_steps=1)
        out = algorithm.loss(inp)
        out.loss.backward()  # ``ent`` (with its graph, for "before") stays alive until here, as in update
        del ent
        return out.metrics

    micro_batch()  # warm-up: allocates the gradient buffers
    grads = [p.grad for p in params if p.grad is not None]  # the vision tower gets none (text only)
    times = []
    for _ in range(a.repeats):
        for grad in grads:
            grad.zero_()
        t0 = time.perf_counter()
        micro_batch()
        times.append(time.perf_counter() - t0)
    for grad in grads:
        grad.zero_()
    strict = strict_malloc()
    gc.collect()
    with PeakRSS() as peak:
        metrics = micro_batch()
    grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads])))
    s = median(times)
    return {"peak_extra_mib": peak.extra, "s_per_micro_batch": s, "tokens_per_s": n * T / s,
            "loss": metrics.get("loss", float("nan")), "entropy": metrics.get("entropy", float("nan")),
            "grad_norm": grad_norm, "memory_method": peak.method + ("" if strict else ", glibc defaults"),
            "load": load()}


def _available_mib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def spawn_point(variant: str, T: int, a: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`run_point` in a fresh process (clean allocator state; an OOM kills only it)."""
    if variant == "before":
        need = BEFORE_COPIES * a.micro_batch * T * VOCAB * 4 / 2**20
        free = _available_mib()
        if need > 0.85 * free:
            return {"skipped": f"needs ~{need / 1024:.1f} GiB ({BEFORE_COPIES} copies of the "
                               f"[{a.micro_batch}, {T}, {VOCAB}] fp32 logits), {free / 1024:.1f} GiB available"}
    cmd = [sys.executable, __file__, "--worker", variant, "--lengths", str(T), "--micro-batch", str(a.micro_batch),
           "--hidden", str(a.hidden), "--layers", str(a.layers), "--chunk-size", str(a.chunk_size),
           "--repeats", str(a.repeats), "--threads", str(a.threads), "--temperature", str(a.temperature),
           "--seed", str(a.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if proc.returncode != 0:
        return {"failed": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- report
def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    return "–" if key not in r else format(r[key], fmt)


def markdown(res: dict[str, Any]) -> str:
    """The results as a Markdown table (peak extra MiB, logits-related MiB, s and tokens/s per
    micro-batch), with the machine line above it."""
    m, s = res["machine"], res["settings"]
    out = [f"Learner forward + backward per micro-batch on {m['cpu_model']} ({m['isa']}, {s['threads']} threads, "
           f"torch {m['versions']['torch']}): micro-batch {s['micro_batch']}, answer = T/2, V = {VOCAB:,}, text "
           f"tower {s['hidden']} x {s['layers']} layers, chunk {s['chunk_size']}; memory: {s['memory_method']}.", "",
           "| T | variant | peak extra MiB | logits-related MiB | s / micro-batch | tokens / s | loss | grad norm |",
           "|---|---|---|---|---|---|---|---|"]
    for T, row in res["results"].items():
        for v in VARIANTS:
            r = row.get(v)
            if r is None:
                continue
            if "skipped" in r or "failed" in r:
                out.append(f"| {T} | {v} | {r.get('skipped') or r.get('failed')} | | | | | |")
                continue
            out.append(f"| {T} | {v} | {r['peak_extra_mib']:,.0f} | {_cell(r, 'logits_mib', ',.0f')} | "
                       f"{r['s_per_micro_batch']:.2f} | {r['tokens_per_s']:,.0f} | {r['loss']:.6f} | "
                       f"{r['grad_norm']:.6f} |")
        if "logits_ratio" in row:
            out.append(f"| {T} | **after / before** | | **{row['logits_ratio']:.3f}** | "
                       f"**{row['speedup']:.1f}x faster** | | | |")
    if res.get("trl_skipped"):
        out += ["", f"TRL skipped: {res['trl_skipped']}"]
    elif s.get("trl_path"):
        out += ["", f"TRL's path: {s['trl_path']} (TRL {m['versions']['trl']})."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,1024,2048,3072", help="sequence lengths T, comma-separated")
    p.add_argument("--micro-batch", type=int, default=2, help="sequences per micro-batch")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=256, help="learner.logprob_chunk_size of the after path")
    p.add_argument("--repeats", type=int, default=2, help="measured micro-batches per point (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per point")
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "memory"))
    p.add_argument("--smoke", action="store_true", help="T = 256, micro-batch 1, 1 repeat, hidden 64, in this process")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.lengths, a.micro_batch, a.repeats, a.hidden = "256", 1, 1, 64
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.worker:
        print(json.dumps(run_point(a.worker, lengths[0], a)))
        return {}

    trl_skipped = trl_available()
    variants = [v for v in a.variants.split(",") if v in VARIANTS and not (v == "trl" and trl_skipped)]
    if trl_skipped:
        print(f"TRL skipped: {trl_skipped}")
    res: dict[str, Any] = {"machine": machine(), "settings": {
        "micro_batch": a.micro_batch, "hidden": a.hidden, "layers": a.layers, "vocab": VOCAB,
        "chunk_size": a.chunk_size, "repeats": a.repeats, "threads": a.threads, "temperature": a.temperature,
        "answer_fraction": 0.5, "memory_method": "?", "trl_path": None if trl_skipped else trl_path()},
        "results": {}, "trl_skipped": trl_skipped}
    for T in lengths:
        row: dict[str, Any] = {}
        for v in variants:
            print(f"T={T} {v} ...", flush=True)
            row[v] = run_point(v, T, a) if a.smoke else spawn_point(v, T, a)
            if "memory_method" in row[v]:
                res["settings"]["memory_method"] = row[v]["memory_method"]
            print(f"  {row[v]}", flush=True)
        floor = row.get("backbone", {}).get("peak_extra_mib")
        for r in row.values():
            if floor is not None and "peak_extra_mib" in r and r is not row["backbone"]:
                r["logits_mib"] = max(r["peak_extra_mib"] - floor, 0.0)
        before, after = row.get("before", {}), row.get("after", {})
        if "logits_mib" in before and "logits_mib" in after:
            row["logits_ratio"] = after["logits_mib"] / max(before["logits_mib"], 1e-9)
            row["speedup"] = before["s_per_micro_batch"] / after["s_per_micro_batch"]
        res["results"][str(T)] = row
    res["machine"]["load_after"] = load()
    out = Path(a.out)
    write_json(out / "results.json", res)
    print(markdown(res))
    print(f"wrote {out / 'results.json'}")
    return res


if __name__ == "__main__":
    main()
