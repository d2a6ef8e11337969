"""How rl-vlm's step time grows with rollout batch size, samples per prompt and response length.

One system (1 vLLM engine, 2 ZeRO-3 ranks, the random-weight tiny model, so responses run to
``max_new_tokens``) is started once; between measurement points the driver, the engine group and
the learners are re-pointed at the point's sizes (prompts per step B, samples per prompt G,
max new tokens T; one optimizer step per step, micro-batches of <= 16 sequences per rank, the
DeepSpeed accumulation steps set to match), then ``--steps`` steps run after ``--warmup``.
The controller's own ``train_step`` runs each step, so the phases are exactly those of
``metrics.jsonl`` (``time/*_s``).

For each axis the exponent k of time ~ size^k is fitted by least squares on logs, for the step
and for every phase.

    .venv/bin/python scripts/bench_scaling.py
    .venv/bin/python scripts/bench_scaling.py --smoke        # 2 points, 1 step each
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, build_model, fit_power, load, machine, median, write_json  # noqa: E402
from bench_e2e import MAX_PIXELS, MIN_PIXELS, data_files  # noqa: E402

BASE = {"B": 4, "G": 8, "T": 32}
AXES = {"B": [2, 4, 8, 16], "G": [2, 4, 8, 16], "T": [8, 16, 32, 64]}
MICRO = 16


def _set_learner(learner: Any, micro: int, gas: int) -> None:
    """Inside a learner actor: micro-batch size and gradient accumulation of a new batch shape."""
    learner.cfg = dataclasses.replace(learner.cfg, micro_batch_size=micro)
    learner.gas = gas
    learner.engine.set_train_micro_batch_size(micro)
    learner.engine.set_train_batch_size(micro * gas * learner.world_size)


def reconfigure(sys_: Any, B: int, G: int, T: int) -> None:
    """Point a running system at B prompts x G samples, <= T new tokens, one optimizer step."""
    import ray

    cfg = sys_.cfg
    new = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, rollout_batch_size=B),
        rollout=dataclasses.replace(cfg.rollout, n=G, max_new_tokens=T),
        learner=dataclasses.replace(cfg.learner, mini_batch_size=B))
    per_rank = B * G // sys_.learners.world_size
    micro = min(MICRO, per_rank)
    if per_rank % micro:
        raise ValueError(f"{per_rank} sequences per rank is not a multiple of {micro}")
    sys_.cfg = new
    sys_.rollout.cfg = new.rollout
    sys_.learners.cfg = dataclasses.replace(new, learner=dataclasses.replace(new.learner, micro_batch_size=micro))
    sys_.train_sampler.batch_size = B
    ray.get([a.__ray_call__.remote(_set_learner, micro, per_rank // micro) for a in sys_.learners.actors])


def main(argv: list[str] | None = None, pools: Any = None) -> dict[str, Any]:
    """``argv``: the command line (default ``sys.argv``); ``pools``: a
    :class:`~rl_vlm.distributed.interfaces.PoolProvider` (default: a fresh system)."""
    from rl_vlm.algorithms import build_algorithm
    from rl_vlm.compose import compose
    from rl_vlm.distributed.provider import FreshPools
    from rl_vlm.driver.controller import train_step
    from rl_vlm.driver.rollout_phase import produce
    from rl_vlm.driver.rollout_queue import RolloutQueue
    from rl_vlm.driver.system import build_system
    from rl_vlm.validation import validate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="measured steps per point")
    p.add_argument("--warmup", type=int, default=1, help="steps before each point's measurement")
    p.add_argument("--size", default="tiny")
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "scaling"))
    p.add_argument("--smoke", action="store_true", help="two points of one axis, 1 step each, no warm-up")
    a = p.parse_args(argv)
    axes = {"B": [2, 4]} if a.smoke else AXES
    if a.smoke:
        a.steps, a.warmup = 1, 0
    out = Path(a.out)
    model, n_params = build_model(out.parent / "models" / a.size, a.size)
    train_file, val_file = data_files(out.parent)
    cfg = compose([
        f"model.path={model}", f"data.train_files=[{train_file}]", f"data.val_files=[{val_file}]",
        f"model.min_pixels={MIN_PIXELS}", f"model.max_pixels={MAX_PIXELS}", "data.val_size=4",
        f"data.rollout_batch_size={BASE['B']}", f"rollout.n={BASE['G']}", f"rollout.max_new_tokens={BASE['T']}",
        f"learner.mini_batch_size={BASE['B']}", f"learner.micro_batch_size={MICRO}", "algorithm.kl_coef=0.0",
        "trainer.total_steps=1000", "trainer.val_every=0", f"trainer.output_dir={out}", "trainer.progress_bar=false",
    ])
    validate(cfg)
    report: dict[str, Any] = {"machine": machine(), "parameters": n_params, "base": BASE, "points": [], "fits": {}}
    algorithm = build_algorithm(cfg.algorithm)
    t0 = time.perf_counter()
    pools = pools or FreshPools()
    sys_ = build_system(cfg, pools)
    report["startup_s"] = time.perf_counter() - t0
    step = 0
    queue = RolloutQueue(partial(produce, sys_, algorithm), 0, cfg.trainer.total_steps)  # synchronous steps
    cache: dict[tuple[int, int, int], dict[str, Any]] = {}
    try:
        for axis, values in axes.items():
            for v in values:
                shape = {**BASE, axis: v}
                key = (shape["B"], shape["G"], shape["T"])
                if key not in cache:
                    reconfigure(sys_, *key)
                    rows = []
                    for i in range(a.warmup + a.steps):
                        step += 1
                        m, _ = train_step(sys_, algorithm, step, queue)
                        if i >= a.warmup:
                            rows.append(m)
                    phases = sorted(k for k in rows[0] if k.startswith("time/"))
                    cache[key] = {"B": key[0], "G": key[1], "T": key[2], "completions": key[0] * key[1],
                                  "step_s": median([r["perf/step_s"] for r in rows]),
                                  "response_length": median([r["response/length_mean"] for r in rows]),
                                  **{k: median([r[k] for r in rows]) for k in phases}, "load": load()}
                    print(f"[{time.strftime('%H:%M:%S')}] B={key[0]} G={key[1]} T={key[2]}: "
                          f"{cache[key]['step_s']:.2f} s/step, load {load()}", flush=True)
                report["points"].append({"axis": axis, "value": v, **cache[key]})
                write_json(out / "results.json", report)
    finally:
        pools.release(failed=False)
    for axis in axes:
        pts = [q for q in report["points"] if q["axis"] == axis]
        keys = ["step_s"] + sorted(k for k in pts[0] if k.startswith("time/"))
        report["fits"][axis] = {k: fit_power([q["value"] for q in pts], [max(q[k], 1e-6) for q in pts]) for k in keys}
        print(f"{axis}: k(step) = {report['fits'][axis]['step_s']:.2f}; "
              + ", ".join(f"{k[5:-2]} {report['fits'][axis][k]:.2f}" for k in keys[1:]), flush=True)
    report["machine"]["load_after"] = load()
    write_json(out / "results.json", report)
    return report


if __name__ == "__main__":
    main()
