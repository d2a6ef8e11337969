"""Run GRPO and each variant on easy-VQA colour questions and compare them.

Every algorithm preset (``configs/algorithm/<name>.yaml``) is trained one after another in this
process, from the same warm-started tiny model, data and seed, with the settings of
``experiment=grpo_easy_vqa_learning`` (lr 5e-4, 16 prompts x 8 samples per step; the settings
under which the tiny model measurably learns). Only the algorithm group changes between runs,
so the presets bring their authors' algorithm hyperparameters (PAPO's γ = 0.02 and KL β = 0.01,
VPPO's β_min 0.9 and top-40% tokens, CARE's EMA 0.995 every 10 steps, VOGUE's σ = 0.2, ...),
tuned for 3B/7B models, not for this 0.66 M-parameter one.

Writes under ``--out`` (default ``runs/compare``): one run directory per algorithm (its
``metrics.jsonl``), ``results.md`` (the tables, also printed), ``results.json`` and
``curves.png`` (training reward and validation accuracy per step; needs matplotlib,
``requirements/plot.txt``). An algorithm's run directory is replaced by a fresh run each time
(the trainer would otherwise resume from its final checkpoint), unless ``--reuse`` finds a
finished run with the same settings there.

    .venv/bin/python scripts/compare_algorithms.py                       # 30 steps each
    .venv/bin/python scripts/compare_algorithms.py --steps 1 --algorithms grpo
    .venv/bin/python scripts/compare_algorithms.py --algorithms grpo vogue vogue_paper --val-every 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_ALGORITHMS = ["grpo", "papo", "vppo", "care", "vogue", "papo_vppo"]
"""Presets run by default; ``vogue_paper`` (twice the rollouts) and ``papo_d``/``dr_grpo`` on request."""

VARIANT_PREFIXES = ("papo/", "vppo/", "care/", "vogue/")
"""Metric namespaces of the variants: driver-side (``vppo/alpha_mean``) or, prefixed ``actor/``,
loss-term metrics (``actor/papo/kl_prcp``)."""

HEALTH = ("actor/clip_frac_high", "actor/clip_frac_low", "actor/kl", "actor/entropy", "actor/grad_norm",
          "response/length_mean", "reward/format")
"""Common metrics that show instability (the PAPO authors watch clip-ratio-high and entropy)."""

WINDOW = 5
"""Steps averaged for the "first"/"last" columns."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="training steps per algorithm (default 30)")
    p.add_argument("--val-every", type=int, default=5,
                   help="validate every N steps, plus before the first and after the last (default 5; 0 = never)")
    p.add_argument("--algorithms", nargs="+", default=DEFAULT_ALGORITHMS, metavar="PRESET",
                   help=f"configs/algorithm presets to run, in order (default: {' '.join(DEFAULT_ALGORITHMS)}; "
                        "also vogue_paper, papo_d, dr_grpo)")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    p.add_argument("--seed", type=int, default=1, help="trainer.seed, the same for every algorithm (default 1)")
    p.add_argument("--reuse", action="store_true",
                   help="load an algorithm's finished run from --out instead of retraining it, when its saved "
                        "config has the same settings (runs are deterministic for a fixed seed)")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra Hydra overrides applied to every run, e.g. data.val_size=64 learner.lr=1e-3")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.val_every < 0:
        p.error("--val-every must be >= 0")
    return args


def run_one(algorithm: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    """Train one preset (or, with ``--reuse``, load a finished identical run); returns
    (metrics records, wall seconds; 0 for a reused run)."""
    from rl_vlm.compose import compose
    from rl_vlm.config import to_dict
    from rl_vlm.driver.controller import train
    from rl_vlm.driver.tracking import read_metrics

    run_dir = os.path.join(args.out, algorithm)
    cfg = compose([
        "experiment=grpo_easy_vqa_learning", f"algorithm={algorithm}",
        f"trainer.total_steps={args.steps}", f"trainer.val_every={args.val_every}",
        f"trainer.seed={args.seed}", f"trainer.output_dir={run_dir}", "trainer.progress_bar=false",
        *args.override,
    ])
    if args.reuse and _finished_same_run(run_dir, to_dict(cfg), args.steps):
        print(f"=== {algorithm}: reusing the finished run in {run_dir}", flush=True)
        return read_metrics(run_dir), 0.0
    # A fresh run: the trainer would otherwise resume from the checkpoint a previous run left.
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    train(cfg)
    return read_metrics(run_dir), time.perf_counter() - t0


def _finished_same_run(run_dir: str, wanted: dict[str, Any], steps: int) -> bool:
    """Whether ``run_dir`` holds a run that reached ``steps`` with the same settings (every key of
    its saved config.yaml that still exists has the wanted value; output paths excepted)."""
    import yaml

    from rl_vlm.driver.tracking import read_metrics

    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
            saved = yaml.safe_load(f)
        done = any(r.get("step") == steps and "reward/mean" in r for r in read_metrics(run_dir))
    except (OSError, ValueError):
        return False

    def same(a: Any, b: Any, path: str) -> bool:
        if path in ("trainer.output_dir", "trainer.progress_bar"):
            return True
        if isinstance(a, dict) and isinstance(b, dict):
            return all(same(v, b[k], f"{path}.{k}" if path else k) for k, v in a.items() if k in b)
        return a == b

    return done and same(saved, wanted, "")


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def summarise(algorithm: str, records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Table values for one run (first/last WINDOW steps, validation before/after, own metrics)."""
    # The last record of a step wins: a run restarted after a dead learner repeats steps.
    latest = {r["step"]: r for r in records}
    steps = [latest[k] for k in sorted(latest) if k >= 1 and "reward/mean" in latest[k]]
    val = {k: r["val/accuracy"] for k, r in sorted(latest.items()) if r.get("val/accuracy") is not None}
    first, last = steps[:WINDOW], steps[-WINDOW:]
    own = sorted({k for r in steps for k in r
                  if k.removeprefix("actor/").startswith(VARIANT_PREFIXES)})
    health = [k for k in HEALTH if any(k in r for r in steps)]

    def window(keys: list[str], rows: list[dict[str, Any]]) -> dict[str, float]:
        return {k: _mean([r[k] for r in rows if k in r]) for k in keys}

    return {
        "algorithm": algorithm,
        "steps": len(steps),
        "reward_first": _mean([r["reward/mean"] for r in first]),
        "reward_last": _mean([r["reward/mean"] for r in last]),
        "accuracy_first": _mean([r.get("reward/accuracy", float("nan")) for r in first]),
        "accuracy_last": _mean([r.get("reward/accuracy", float("nan")) for r in last]),
        "val_before": val.get(0, float("nan")),
        "val_after": val[max(val)] if val else float("nan"),
        "val_best": max(val.values()) if val else float("nan"),
        "val": {str(k): v for k, v in sorted(val.items())},
        "step_s": statistics.median(r["perf/step_s"] for r in steps) if steps else float("nan"),
        "wall_s": wall_s,
        "own_first": window(own, first),
        "own_last": window(own, last),
        "health_first": window(health, first),
        "health_last": window(health, last),
        "reward_curve": [(r["step"], r["reward/mean"]) for r in steps],
    }


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def markdown(summaries: list[dict[str, Any]], failures: dict[str, str], args: argparse.Namespace) -> str:
    w = WINDOW
    lines = [
        f"# Algorithm comparison: easy-VQA colour, tiny Qwen2.5-VL, {args.steps} steps, seed {args.seed}",
        "",
        f"reward = mean overall reward (0.1·format + 0.9·accuracy) of the training rollouts, averaged over the "
        f"first/last {w} steps; val = greedy held-out colour accuracy before training / after the last step "
        f"(best in brackets); step = median seconds per training step.",
        "",
        f"| algorithm | reward first {w} | reward last {w} | train acc first {w} | train acc last {w} "
        "| val before | val after (best) | step s | own metrics, mean of last 5 steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        own = ", ".join(f"{k}={_fmt(v)}" for k, v in s["own_last"].items()) or "–"
        lines.append(
            f"| {s['algorithm']} | {_fmt(s['reward_first'])} | {_fmt(s['reward_last'])} "
            f"| {_fmt(s['accuracy_first'])} | {_fmt(s['accuracy_last'])} | {_fmt(s['val_before'])} "
            f"| {_fmt(s['val_after'])} ({_fmt(s['val_best'])}) | {_fmt(s['step_s'], 2)} | {own} |")
    for name, err in failures.items():
        lines.append(f"| {name} | failed: {err} | | | | | | | |")
    val_steps = sorted({int(k) for s in summaries for k in s["val"]})
    if val_steps:
        lines += ["", "Validation accuracy by step:", "",
                  "| algorithm | " + " | ".join(str(k) for k in val_steps) + " |",
                  "|---|" + "---|" * len(val_steps)]
        for s in summaries:
            lines.append(f"| {s['algorithm']} | " + " | ".join(_fmt(s["val"].get(str(k), float("nan")))
                                                                for k in val_steps) + " |")
    lines += ["", f"Metrics, mean of the first {w} → last {w} steps (variant metrics, then common health "
              "metrics):", ""]
    for s in summaries:
        keys = [*s["own_first"], *s["health_first"]]
        firsts = {**s["own_first"], **s["health_first"]}
        lasts = {**s["own_last"], **s["health_last"]}
        lines.append(f"- **{s['algorithm']}**: " + "; ".join(
            f"`{k}` {_fmt(firsts[k])} → {_fmt(lasts[k])}" for k in keys))
    return "\n".join(lines) + "\n"


def plot(summaries: list[dict[str, Any]], path: str) -> bool:
    """Reward per step and validation accuracy per validation step; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r requirements/plot.txt): no curves.png")
        return False
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in summaries:
        xs = [x for x, _ in s["reward_curve"]]
        ys = [y for _, y in s["reward_curve"]]
        # A 3-step moving average: one step is only 16 prompts, so the raw curve is noisy.
        smooth = [_mean(ys[max(0, i - 2): i + 1]) for i in range(len(ys))]
        ax_r.plot(xs, smooth, label=s["algorithm"])
        ax_v.plot([int(k) for k in s["val"]], list(s["val"].values()), marker="o", label=s["algorithm"])
    ax_r.set(title="training reward (3-step moving mean)", xlabel="step", ylabel="reward/mean")
    ax_v.set(title="held-out colour accuracy (greedy)", xlabel="step", ylabel="val/accuracy")
    for ax in (ax_r, ax_v):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    summaries: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for name in args.algorithms:
        print(f"=== {name}: {args.steps} steps", flush=True)
        try:
            records, wall = run_one(name, args)
        except Exception as e:  # keep going: one broken variant must not lose the others' results
            traceback.print_exc()
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            continue
        s = summarise(name, records, wall)
        summaries.append(s)
        print(f"=== {name}: reward {_fmt(s['reward_first'])} -> {_fmt(s['reward_last'])}, "
              f"val {_fmt(s['val_before'])} -> {_fmt(s['val_after'])}, {wall:.0f} s", flush=True)
    table = markdown(summaries, failures, args)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "results": summaries, "failures": failures}, f, indent=1)
    if summaries and plot(summaries, os.path.join(args.out, "curves.png")):
        print(f"wrote {os.path.join(args.out, 'curves.png')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
