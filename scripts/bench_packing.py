"""The learner's forward layout at real shapes: padding vs packing, every image copy vs each
image once, fixed vs token-budget micro-batches. One real DeepSpeed ZeRO-3 rank in this process
(``Learner.init``, gloo, world size 1) on the real-shape model (``rl-vlm build-tiny-model --shape
real``: V = 151,936, Qwen2.5-VL's vision geometry, narrow towers).

The mini-batch is one GRPO group: one prompt with one ``--image-side``² image (1,024 visual tokens
at 896 px) and ``--group`` responses of ragged lengths (evenly spread over
``--min-answer``..``--max-answer`` tokens: what long reasoning answers look like, where padding to
the longest costs most). Per variant, in a fresh process (``--smoke`` too): set the batch, then ``--repeats`` of
(old log-probs, no grad + update: forward, GRPO loss, backward, optimizer step); median seconds,
real (unpadded) tokens per second, peak resident memory above the start of the last repeat
(bench_memory's VmHWM method). The variants:

    padded_every_copy  before: right-padded rows of micro_batch_size, each response's copy of the
                       image through the vision tower (the distinct-image map is switched off)
    padded_once        right-padded rows, each distinct image encoded once (the CPU default,
                       ``learner.packing=auto`` under sdpa)
    padded_budget      padded, micro-batches sized by ``--budget`` tokens instead of a count
                       (``learner.max_tokens_per_micro_batch``)
    packed_once        one packed row per micro-batch, each image once (``learner.packing=on``;
                       the default with flash-attn)
    packed_budget      packed, micro-batches sized by ``--budget`` tokens

    .venv/bin/python scripts/bench_packing.py                 # group 8, answers 256..1024, micro-batch 4
    .venv/bin/python scripts/bench_packing.py --smoke         # group 2, answers 16..64, image 224 px

Writes ``<out>/results.json`` (default runs/bench/packing/) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import REPO, machine, real_shape_model, write_json  # noqa: E402
from bench_memory import PeakRSS, strict_malloc  # noqa: E402

VARIANTS = ("padded_every_copy", "padded_once", "padded_budget", "packed_once", "packed_budget")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answer_lengths(a: argparse.Namespace) -> list[int]:
    g = a.group
    return [a.min_answer + (a.max_answer - a.min_answer) * k // max(g - 1, 1) for k in range(g)]


def run_variant(variant: str, a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    import rl_vlm.distributed.workers.learner as learner_mod
    import rl_vlm.distributed.workers.packing as packing_mod
    from rl_vlm.config import AlgorithmConfig, LearnerConfig, ModelConfig
    from rl_vlm.data.prompt import render_prompt
    from rl_vlm.distributed.sharding import shard_step

    torch.set_num_threads(a.threads)
    if variant == "padded_every_copy":
        packing_mod.distinct_images = lambda *_args, **_kw: None  # every copy through the tower
    path, _ = real_shape_model(Path(a.out).parent / "models" / "real_shape")
    pixels = a.image_side ** 2
    model_cfg = ModelConfig(path=str(path), dtype="float32", attn_implementation="sdpa", min_pixels=pixels,
                            max_pixels=pixels)
    lengths = answer_lengths(a)
    packed = variant.startswith("packed")
    budget = a.budget if variant.endswith("_budget") else 0
    lc = LearnerConfig(num_ranks=1, micro_batch_size=a.micro_batch, lr=1e-5, packing="on" if packed else "off",
                       max_tokens_per_micro_batch=budget, logprob_chunk_size=256)
    learner = learner_mod.Learner(0, 1, model_cfg, lc, AlgorithmConfig(), "cpu", 0)
    gas = 1 if budget else a.group // a.micro_batch
    learner.init("127.0.0.1", _free_port(), gas)

    proc = learner.processor  # the learner's own pixel limits, as the rollout's prompts are made
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (a.image_side, a.image_side, 3), dtype=np.uint8))
    text = render_prompt(proc, "what color is the shape?", 1, "think_answer")
    prompt = proc(text=[text], images=[img], return_tensors="pt")["input_ids"][0].tolist()
    g = torch.Generator().manual_seed(1)
    responses = [torch.randint(1000, 100000, (n,), generator=g).tolist() for n in lengths]
    seq = [len(prompt) + n for n in lengths]
    split = shard_step(lengths, 1, a.group, a.micro_batch, seq, budget, not packed)
    from rl_vlm.distributed.sharding import RankShard

    shard = RankShard(images=[[img]], image_index=[0] * a.group, view_index={}, prompt_ids=[prompt] * a.group,
                      response_ids=responses, mini_batches=split.mini_batches[0],
                      micro_batches=split.rank_micro_batches[0], num_tokens=split.num_tokens,
                      num_seqs=split.num_seqs, max_response_len=max(lengths), temperature=1.0, step=1, total_steps=10)
    learner.set_batch(shard)
    adv = [torch.full((n,), 1.0 if k % 2 else -1.0) for k, n in enumerate(lengths)]
    times, peak, method = [], 0.0, ""
    for r in range(a.repeats + 1):
        last = r == a.repeats
        if last:
            strict_malloc()
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            old = learner.compute_logprobs()
            learner.update(adv, old, None)
        dt = time.perf_counter() - t0
        if r:  # repeat 0 warms up (optimizer state, gradient buffers)
            times.append(dt)
        if last:
            peak, method = mem.extra, mem.method
    step_s = statistics.median(times) if times else float("nan")
    tokens = sum(seq)
    return {"variant": variant, "step_s": step_s, "tokens_per_s": tokens / step_s, "peak_extra_mib": peak,
            "memory_method": method, "tokens": tokens, "prompt_tokens": len(prompt), "answers": lengths,
            "micro_batches": split.rank_micro_batches[0][0],
            "padded_tokens": sum(len(m) * max(seq[i] for i in m) for m in split.micro_batches)}


def spawn(variant: str, argv: list[str]) -> dict[str, Any]:
    """:func:`run_variant` in a fresh process: its own process group and memory."""
    out = subprocess.run([sys.executable, __file__, "--point", variant, *argv], capture_output=True, text=True,
                         check=False)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    return {"variant": variant, "error": (out.stderr or out.stdout)[-2000:]}


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    s = res["settings"]
    rows = [f"{m['cpu_model']} ({m['isa']}), {m['cpus']} cores, torch {m['versions']['torch']}; real-shape model, one "
            f"{s['image_side']} px image ({res['prompt_tokens']} prompt tokens), {s['group']} answers of "
            f"{s['min_answer']}-{s['max_answer']} tokens, micro-batch {s['micro_batch']} / budget {s['budget']}",
            "", "| variant | s / mini-batch | tokens/s | tokens in the forward | peak extra MiB | micro-batches |",
            "|---|---|---|---|---|---|"]
    for r in res["results"]:
        if "error" in r:
            rows.append(f"| {r['variant']} | failed | | | | |")
            continue
        fwd = r["tokens"] if r["variant"].startswith("packed") else r["padded_tokens"]
        rows.append(f"| {r['variant']} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {fwd} | "
                    f"{r['peak_extra_mib']:.0f} | {len(r['micro_batches'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--min-answer", type=int, default=256)
    p.add_argument("--max-answer", type=int, default=1024)
    p.add_argument("--image-side", type=int, default=896)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--budget", type=int, default=0, help="the *_budget variants' tokens per micro-batch "
                   "(0: micro-batch x (prompt + mean answer))")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "packing"))
    p.add_argument("--smoke", action="store_true", help="group 2, answers 16-64, a 224 px image, 1 repeat")
    p.add_argument("--point", default="", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    if a.smoke:
        a.group, a.min_answer, a.max_answer, a.image_side, a.micro_batch, a.repeats = 2, 16, 64, 224, 2, 1
    if not a.budget:
        a.budget = a.micro_batch * ((a.image_side // 28) ** 2 + 64 + (a.min_answer + a.max_answer) // 2)
    if a.point:
        print("RESULT " + json.dumps(run_variant(a.point, a)), flush=True)
        return {}
    res: dict[str, Any] = {"machine": machine(), "settings": {k: v for k, v in vars(a).items() if k != "point"},
                           "results": [], "prompt_tokens": "?"}
    for v in a.variants.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] {v}", flush=True)
        r = spawn(v, argv)
        res["results"].append(r)
        if "prompt_tokens" in r:
            res["prompt_tokens"] = r["prompt_tokens"]
        print(f"  {json.dumps({k: r[k] for k in r if k not in ('answers',)})[:400]}", flush=True)
    write_json(Path(a.out) / "results.json", res)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
