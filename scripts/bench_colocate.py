"""Colocated vs split pools, and LoRA vs full fine-tuning, through ``rl-vlm train``: step time,
its phases and the peak memory of every actor process, by model.

Each (model, layout) is a fresh system of 1 vLLM engine and 1 ZeRO-3 learner rank:

- ``split``: the engine and the rank in bundles of their own (``cluster.colocate=false``);
- ``colocated``: both in one bundle of one placement group, taking turns
  (``cluster.colocate=true``; on CPU vLLM has no sleep mode, so the pools only share cores);
- ``colocated_lora``: colocated, training LoRA adapters of ``--lora-rank`` (``model.lora.rank``),
  the engine serving each synced adapter.

Peak memory is each actor's ``VmHWM`` (its resident set's high-water mark, start-up included)
from ``/proc``, read when the run ends. The step is the median over the measured steps (after
``--warmup``).

    .venv/bin/python scripts/bench_colocate.py                        # tiny and real_shape
    .venv/bin/python scripts/bench_colocate.py --models tiny --smoke  # 1 + 1 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_async import WORKLOADS, bench_model, model_overrides  # noqa: E402
from bench_common import REPO, load, machine, write_json  # noqa: E402
from bench_e2e import data_files  # noqa: E402

LAYOUTS = ("split", "colocated", "colocated_lora")
PHASES = ("rollout", "sleep", "old_logprob", "update", "sync")


def layout_overrides(layout: str, lora_rank: int, lora_lr: float) -> list[str]:
    if layout == "split":
        return []
    if layout == "colocated":
        return ["cluster.colocate=true"]
    return ["cluster.colocate=true", f"model.lora.rank={lora_rank}", f"learner.lr={lora_lr}"]


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def run_one(name: str, path: Path, layout: str, work: Any, files: tuple[Path, Path], run_dir: Path,
            a: argparse.Namespace) -> dict[str, Any]:
    from rl_vlm.compose import compose
    from rl_vlm.distributed.provider import SharedPools
    from rl_vlm.driver.controller import train
    from rl_vlm.driver.tracking import read_metrics

    train_file, val_file = files
    cfg = compose([
        *model_overrides(name, path), f"data.train_files=[{train_file}]", f"data.val_files=[{val_file}]",
        f"data.rollout_batch_size={work.prompts}", f"rollout.n={work.samples}",
        f"rollout.max_new_tokens={work.max_new_tokens}", f"learner.mini_batch_size={work.prompts}",
        f"learner.micro_batch_size={work.micro_batch_size}", f"learner.lr={a.lr}", "rollout.num_engines=1",
        "learner.num_ranks=1", "rollout.torch_threads=1", "learner.torch_threads=1",
        f"trainer.total_steps={a.warmup + work.steps}", "trainer.val_every=0", f"trainer.output_dir={run_dir}",
        "trainer.progress_bar=false", f"trainer.seed={a.seed}",
        *layout_overrides(layout, a.lora_rank, a.lora_lr)])
    pools = SharedPools()  # this run's own system; kept alive after train() to read its actors' peaks
    try:
        t0 = time.perf_counter()
        train(cfg, pools=pools)
        wall = time.perf_counter() - t0
        peaks = {pool: [peak_rss_mib(pid) for pid in pids] for pool, pids in pools.actor_pids().items()}
    finally:
        pools.close()
    rows = [r for r in read_metrics(str(run_dir)) if r.get("step", 0) > a.warmup and "perf/step_s" in r]
    res: dict[str, Any] = {"layout": layout, "steps": len(rows), "wall_s": wall,
                           "step_s": statistics.median(r["perf/step_s"] for r in rows),
                           "peak_rss_mib": peaks, "peak_rss_total_mib": sum(sum(v) for v in peaks.values())}
    for phase in PHASES:
        times = [r[f"time/{phase}_s"] for r in rows if f"time/{phase}_s" in r]
        res[f"{phase}_s"] = statistics.median(times) if times else 0.0
    res["logprob_max_diff"] = max(r["rollout/logprob_max_diff"] for r in rows)
    return res


def markdown(report: dict[str, Any]) -> str:
    lines = ["| model | layout | step s | rollout | sleep | old log-prob | update | sync | engine peak MiB | "
             "learner peak MiB | max log-prob diff |", "|---" * 11 + "|"]
    for name, entry in report["results"].items():
        for layout, r in entry["runs"].items():
            lines.append(
                f"| {name} | {layout} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['sleep_s']:.3f} | "
                f"{r['old_logprob_s']:.2f} | {r['update_s']:.2f} | {r['sync_s']:.3f} | "
                f"{sum(r['peak_rss_mib']['rollout']):.0f} | {sum(r['peak_rss_mib']['learner']):.0f} | "
                f"{r['logprob_max_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,real_shape", help="comma-separated: tiny, m60m, real_shape")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--steps", type=int, default=0, help="measured steps (0: bench_async's WORKLOADS entry)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "colocate"))
    p.add_argument("--smoke", action="store_true", help="1 warm-up + 1 measured step")
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.warmup = 1, 1
    out = Path(a.out)
    files = data_files(out.parent)
    report: dict[str, Any] = {"machine": machine(), "settings": {k: v for k, v in vars(a).items() if k != "out"},
                              "results": {}}
    for name in a.models.split(","):
        path, n_params = bench_model(name, out.parent / "models")
        work = WORKLOADS[name]
        if a.steps:
            work = dataclasses.replace(work, steps=a.steps)
        entry: dict[str, Any] = {"parameters": n_params, "workload": dataclasses.asdict(work), "runs": {}}
        report["results"][name] = entry
        for layout in a.layouts.split(","):
            print(f"[{time.strftime('%H:%M:%S')}] {name} ({n_params / 1e6:.1f} M) {layout}, load {load()}", flush=True)
            r = run_one(name, path, layout, work, files, out / f"{name}-{layout}-{time.strftime('%Y%m%d-%H%M%S')}", a)
            entry["runs"][layout] = r
            print(f"  {r['step_s']:.2f} s/step, peak RSS {r['peak_rss_total_mib']:.0f} MiB", flush=True)
            write_json(out / "results.json", report)
    write_json(out / "results.json", report)
    m = report["machine"]
    print(f"{m['cpu_model']} ({m['isa']}), {m['cpus']} CPUs\n" + markdown(report))
    return report


if __name__ == "__main__":
    main()
