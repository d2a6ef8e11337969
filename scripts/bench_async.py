"""Asynchronous rollout on disjoint cores: the step at ``trainer.max_staleness`` k = 0, 1, 2.

With k = 0 the loop samples, then updates: the engine waits while the learners work and the other
way round. With k >= 1 the engines sample the next k batches while the learners update, so on
pools with cores of their own a step should cost max(rollout, update) instead of their sum.
This runs ``train()`` per model and k with the rollout engine pinned to one set of CPUs and the
learner rank(s) to another (``cluster.rollout_cpu_affinity`` / ``cluster.learner_cpu_affinity``,
default CPU 0 and CPU 1, one torch thread each, one learner rank) for ``--warmup`` + ``--steps``
+ k steps and reports the medians of the ``--steps`` in the middle, per k. The first steps are
the warm-up (with k >= 1 the first step still waits for its own batch); the last k are the
cool-down: the schedule samples nothing past the run's last step, so no rollout runs behind them
(rl_vlm/driver/rollout_queue.py).

    s / step         ``perf/step_s``
    rollout s        ``time/rollout_s`` (the engine's generation of that step's batch)
    learner s        old_logprob + advantage + update + sync (the learners' work of the step)
    busy fractions   rollout s / step s and learner s / step s (per step, then the median)
    CPU utilisation  each pinned CPU's busy share over the measured steps (/proc/stat, sampled
                     every 0.2 s): what the cores really did, the driver and reward workers
                     included (they are not pinned)
    speed-up         s / step at k = 0 over s / step at k
    overlap          s / step over max(rollout s, learner s): 1 = perfect overlap (k >= 1),
                     about (rollout + learner) / max at k = 0
    staleness        ``rollout/staleness_mean`` / ``_max`` (weight versions between sampling and update)

Targets (issue 15): overlap <= 1.1 with k >= 1, speed-up >= 1.4.

Models: ``m60m`` (bench_common.SIZES, the 60 M model the other benchmarks build) and
``real_shape`` (rl_vlm/models/real_shape.py: Qwen2.5-VL's vocabulary and vision geometry, 41 M
parameters; ``artifacts/real-shape-qwen2.5-vl`` if ``rl-vlm build-tiny-model --shape real`` wrote
it, else built into the bench cache), the latter with a shorter run. One running system serves
all k of a model (the pools are re-pointed between runs, as in the test suite); ``--fresh``
starts a new one per run, as ``rl-vlm train`` does.

    .venv/bin/python scripts/bench_async.py                     # m60m + real_shape, k = 0, 1, 2 (~25 min on 2 cores)
    .venv/bin/python scripts/bench_async.py --models m60m --ks 0,1
    .venv/bin/python scripts/bench_async.py --models m60m --max-new-tokens 128   # more rollout per step
    .venv/bin/python scripts/bench_async.py --smoke             # the tiny model, k = 0 and 1, 1 measured step

Writes ``<out>/results.json`` (default runs/bench/async/) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, build_model, isa_summary, load, machine, median, write_json  # noqa: E402
from bench_e2e import MAX_PIXELS, MIN_PIXELS, data_files  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model's step: P prompts x G samples, <= T new tokens, micro-batches of M sequences;
    ``steps`` measured (the run adds the warm-up before and the cool-down after them)."""

    prompts: int
    samples: int
    max_new_tokens: int
    micro_batch_size: int
    steps: int


WORKLOADS = {
    # bench_e2e's settings.
    "tiny": Workload(4, 8, 32, 16, 3),
    "m60m": Workload(4, 8, 32, 16, 3),
    # Shorter: fewer, longer answers over the real vocabulary (256 visual tokens per prompt).
    "real_shape": Workload(2, 4, 128, 4, 2),
}
LEARNER_PHASES = ("old_logprob", "advantage", "update", "sync")
"""The ``time/<phase>_s`` that make up the learners' work in a step (the learner side of the overlap)."""
TARGET_OVERLAP, TARGET_SPEEDUP = 1.1, 1.4


# ----------------------------------------------------------------------------------- models
def real_shape_model(cache: Path) -> tuple[Path, int]:
    """The real-shape model: the one in artifacts/ if built there, else one built into ``cache``."""
    from rl_vlm.models.real_shape import build_real_shape_model

    for d in (REPO / "artifacts" / "real-shape-qwen2.5-vl", cache):
        info = d / "build_info.json"
        if info.exists() and json.loads(info.read_text()).get("shape") == "real":
            return d, int(json.loads(info.read_text())["parameters"])
    build_real_shape_model(cache, seed=0)
    return cache, int(json.loads((cache / "build_info.json").read_text())["parameters"])


def bench_model(name: str, models_dir: Path) -> tuple[Path, int]:
    """Model ``name`` of :data:`WORKLOADS` and its parameter count, built under ``models_dir`` if need be."""
    if name == "real_shape":
        return real_shape_model(models_dir / "real_shape")
    return build_model(models_dir / name, name)


def model_overrides(name: str, path: Path) -> list[str]:
    if name == "real_shape":  # its group sets the pixel bounds (256-1,280 visual tokens) and prompt length
        return ["model=real_shape", f"model.path={path}"]
    return [f"model.path={path}", f"model.min_pixels={MIN_PIXELS}", f"model.max_pixels={MAX_PIXELS}"]


# ----------------------------------------------------------------------------- core meter
def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per logical CPU: (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *vals = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in vals[:8])
            busy = user + nice + system + irq + softirq + steal
            out[int(name[3:])] = (busy, busy + idle + iowait)
    return out


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (/proc/<pid>/stat)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                out[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def actor_affinity() -> dict[str, list[list[int]]]:
    """The CPUs each engine / learner process (``ray::RolloutEngine`` / ``ray::Learner``) this
    process started (through its Ray instance) may use, the union over its threads: what the
    pinning did, seen from outside."""
    parents = _parents()

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    found: dict[str, list[list[int]]] = {"rollout": [], "learner": []}
    for pid in filter(ours, parents):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            pool = ("rollout" if cmd.startswith(b"ray::RolloutEngine") else
                    "learner" if cmd.startswith(b"ray::Learner") else None)
            if pool is None:
                continue
            cpus: set[int] = set()
            for tid in os.listdir(f"/proc/{pid}/task"):
                cpus |= os.sched_getaffinity(int(tid))
            found[pool].append(sorted(cpus))
        except OSError:  # the process or thread ended
            continue
    return found


class CoreMeter:
    """In a thread, every ``period`` s: the per-CPU counters and which steps ``metrics.jsonl``
    holds, so the CPUs' utilisation can be taken over exactly the measured steps."""

    def __init__(self, metrics_file: Path, period: float = 0.2) -> None:
        self.metrics_file, self.period = metrics_file, period
        self.samples: list[dict[int, tuple[int, int]]] = []
        self.step_seen: dict[int, int] = {}
        """Step -> index of the first sample taken after its row was written."""
        self.affinity: dict[str, list[list[int]]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CoreMeter:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()  # after the last row

    def _steps(self) -> set[int]:
        try:
            with open(self.metrics_file, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip().endswith("}")]
        except (OSError, json.JSONDecodeError):
            return set()
        return {int(r["step"]) for r in rows if "step" in r}

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._tick()

    def _tick(self) -> None:
        steps = self._steps()  # before the counters: a step seen is over by the sample
        self.samples.append(_cpu_times())
        self.step_seen.setdefault(0, 0)  # "after step 0": from the start of the run
        for s in steps - set(self.step_seen):
            self.step_seen[s] = len(self.samples) - 1
        if self.affinity is None and self.step_seen:
            self.affinity = actor_affinity()  # the actors are up and working now

    def utilisation(self, after_step: int, last_step: int) -> dict[str, float]:
        """CPU id -> busy share between the rows of ``after_step`` and ``last_step``."""
        if after_step not in self.step_seen or last_step not in self.step_seen or after_step >= last_step:
            return {}
        a, b = self.samples[self.step_seen[after_step]], self.samples[self.step_seen[last_step]]
        return {str(c): (b[c][0] - a[c][0]) / max(b[c][1] - a[c][1], 1) for c in sorted(a) if c in b}


# ------------------------------------------------------------------------------------ runs
def summarize(rows: list[dict[str, Any]], warmup: int, cooldown: int) -> dict[str, Any]:
    """The medians over the steady steps, ``rows`` (one per step, from metrics.jsonl) without the
    first ``warmup`` and the last ``cooldown``."""
    steady = rows[warmup: len(rows) - cooldown] or rows[-1:]

    def t(r: dict[str, Any], phase: str) -> float:
        return float(r[f"time/{phase}_s"])

    step = [float(r["perf/step_s"]) for r in steady]
    rollout = [t(r, "rollout") for r in steady]
    learner = [sum(t(r, p) for p in LEARNER_PHASES) for r in steady]
    stale_mean = [float(r["rollout/staleness_mean"]) for r in steady]
    stale_max = [float(r["rollout/staleness_max"]) for r in steady]
    phases = sorted({k for r in steady for k in r if k.startswith("time/")})
    return {
        "step_s": median(step), "rollout_s": median(rollout), "learner_s": median(learner),
        "reward_s": median([t(r, "reward") for r in steady]),
        "rollout_wait_s": median([t(r, "rollout_wait") for r in steady]),
        "sync_wait_s": median([t(r, "sync_wait") for r in steady]),
        "rollout_busy": median([ro / s for ro, s in zip(rollout, step, strict=True)]),
        "learner_busy": median([le / s for le, s in zip(learner, step, strict=True)]),
        "overlap": median([s / max(ro, le, 1e-9) for s, ro, le in zip(step, rollout, learner, strict=True)]),
        "staleness_mean": sum(stale_mean) / len(stale_mean) if stale_mean else float("nan"),
        "staleness_max": max(stale_max) if stale_max else float("nan"),
        "phases": {k: median([float(r[k]) for r in steady if k in r]) for k in phases},
        "step_s_all": [float(r["perf/step_s"]) for r in rows],
    }


def run_one(model: str, path: Path, k: int, work: Workload, train_file: Path, val_file: Path, run_dir: Path,
            a: argparse.Namespace, pinned: bool, pools: Any) -> dict[str, Any]:
    from rl_vlm.compose import compose
    from rl_vlm.driver.controller import train
    from rl_vlm.driver.tracking import read_metrics

    overrides = [
        *model_overrides(model, path), f"data.train_files=[{train_file}]", f"data.val_files=[{val_file}]",
        f"data.rollout_batch_size={work.prompts}", f"rollout.n={work.samples}",
        f"rollout.max_new_tokens={work.max_new_tokens}", "rollout.temperature=1.0",
        f"learner.mini_batch_size={work.prompts}", f"learner.micro_batch_size={work.micro_batch_size}",
        f"learner.lr={a.lr}", "algorithm.kl_coef=0.0", "rollout.torch_threads=1", "learner.torch_threads=1",
        f"trainer.total_steps={a.warmup + work.steps + k}", "trainer.val_every=0", f"trainer.output_dir={run_dir}",
        "trainer.progress_bar=false", "trainer.save_final_model=false", f"trainer.seed={a.seed}",
        f"trainer.max_staleness={k}",
    ]
    if pinned:
        overrides += ["cluster.device=cpu", f"cluster.rollout_cpu_affinity=[{a.rollout_cpus}]",
                      f"cluster.learner_cpu_affinity=[{a.learner_cpus}]", f"learner.num_ranks={a.learner_ranks}"]
    cfg = compose([*overrides, *a.overrides])
    load_before = load()
    t0 = time.perf_counter()
    with CoreMeter(run_dir / "metrics.jsonl") as meter:
        train(cfg, pools=pools)
    wall = time.perf_counter() - t0
    rows = sorted((r for r in read_metrics(str(run_dir)) if r.get("step", 0) >= 1 and "perf/step_s" in r),
                  key=lambda r: r["step"])
    res = summarize(rows, a.warmup, cooldown=k)
    # From the row of the last warm-up step to the row of the last measured one: the measured steps.
    res.update(k=k, steps=len(rows), measured=work.steps, wall_s=wall, load_before=load_before,
               cpu_utilisation=meter.utilisation(a.warmup, a.warmup + work.steps), actor_affinity=meter.affinity)
    return res


# ------------------------------------------------------------------------------------ report
def _f(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    """The results as a Markdown table, with the machine (CPU model and ISA) above it."""
    m, s = res["machine"], res["settings"]
    isa = f"{isa_summary(m['isa_features'])}, torch kernels {m['torch_cpu_capability']}" if "isa" in m else "ISA ?"
    where = (f"rollout engine pinned to CPU {s['rollout_cpus']}, {s['learner_ranks']} learner rank(s) to CPU "
             f"{s['learner_cpus']}" if s["pinned"] else "pools not pinned (a shared system)")
    cpus = [c for c in (s["rollout_cpus"] + "," + s["learner_cpus"]).split(",") if c] if s["pinned"] else []
    out = [f"Asynchronous rollout (`trainer.max_staleness` = k) on {m['cpu_model']} ({isa}; {m['cpus']} CPUs, load "
           f"{m['load']} before): {where}, 1 torch thread each; medians over the steps after the "
           f"first {s['warmup']} (warm-up) and before the last k (cool-down).", "",
           "| model | k | s / step | rollout s | learner s | rollout busy | learner busy | CPU utilisation | "
           "speed-up vs k=0 | step / max(rollout, learner) | staleness mean / max | rollout wait s | sync wait s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in res["results"].items():
        w = entry["workload"]
        label = f"{name} ({entry['parameters'] / 1e6:.1f} M; {w['prompts']}x{w['samples']}, <= {w['max_new_tokens']})"
        for k, r in entry["runs"].items():
            util = " / ".join(f"{c}: {r['cpu_utilisation'][c]:.2f}" for c in (cpus or sorted(r["cpu_utilisation"]))
                              if c in r["cpu_utilisation"]) or "–"
            out.append(f"| {label} | {k} | {_f(r['step_s'])} | {_f(r['rollout_s'])} | {_f(r['learner_s'])} | "
                       f"{_f(r['rollout_busy'])} | {_f(r['learner_busy'])} | {util} | "
                       f"{_f(r.get('speedup', float('nan')))}x | {_f(r['overlap'])} | "
                       f"{_f(r['staleness_mean'])} / {_f(r['staleness_max'], 0)} | {_f(r['rollout_wait_s'])} | "
                       f"{_f(r['sync_wait_s'])} |")
    out += ["", f"learner s = {' + '.join(LEARNER_PHASES)}; CPU utilisation: each CPU's busy share over the measured "
            f"steps (/proc/stat); targets with k >= 1: step / max <= {TARGET_OVERLAP}, speed-up >= {TARGET_SPEEDUP}x."]
    for name, entry in res["results"].items():
        for k, r in entry["runs"].items():
            if int(k) >= 1:
                seen = {pool: cpus or "none seen" for pool, cpus in (r["actor_affinity"] or {}).items()}
                out.append(f"- {name}, k={k}: overlap {'met' if r['overlap_met'] else 'not met'}, speed-up "
                           f"{'met' if r['speedup_met'] else 'not met'}; engine / learner processes ran on CPUs "
                           f"{seen.get('rollout', '?')} / {seen.get('learner', '?')}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None, pools: Any = None) -> dict[str, Any]:
    """``argv``: the command line (default ``sys.argv``); ``pools``: a
    :class:`~rl_vlm.distributed.interfaces.PoolProvider` (the test suite's shared system): then
    nothing is pinned (the shared system's actors are not) and only the smoke path runs."""
    from rl_vlm.distributed.provider import FreshPools, SharedPools

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="m60m,real_shape", help="comma-separated: tiny, m60m, real_shape")
    p.add_argument("--ks", default="0,1,2", help="trainer.max_staleness values; the first is the speed-up's base")
    p.add_argument("--steps", type=int, default=0, help="measured steps per run (0: the model's WORKLOADS entry)")
    p.add_argument("--prompts", type=int, default=0, help="prompts per step (0: the model's WORKLOADS entry)")
    p.add_argument("--samples", type=int, default=0, help="samples per prompt (0: the model's WORKLOADS entry)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: the model's WORKLOADS entry")
    p.add_argument("--micro-batch-size", type=int, default=0, help="0: the model's WORKLOADS entry")
    p.add_argument("--warmup", type=int, default=1, help="steps before the measured ones")
    p.add_argument("--rollout-cpus", default="0", help="cluster.rollout_cpu_affinity, comma-separated")
    p.add_argument("--learner-cpus", default="1", help="cluster.learner_cpu_affinity, comma-separated")
    p.add_argument("--learner-ranks", type=int, default=1, help="learner.num_ranks (they share --learner-cpus)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="a new system per run (default: one per model)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for every run")
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "async"))
    p.add_argument("--smoke", action="store_true", help="the tiny model, k = 0 and 1, 1 measured step (+ 1 warm-up)")
    a = p.parse_args(argv)
    if a.smoke or pools is not None:
        a.models, a.ks, a.steps, a.warmup = "tiny", "0,1", 1, 1
    pinned = pools is None
    out = Path(a.out)
    ks = [int(k) for k in a.ks.split(",")]
    train_file, val_file = data_files(out.parent)
    report: dict[str, Any] = {
        "machine": machine(), "results": {},
        "settings": {"warmup": a.warmup, "ks": ks, "pinned": pinned, "rollout_cpus": a.rollout_cpus,
                     "learner_cpus": a.learner_cpus, "learner_ranks": a.learner_ranks if pinned else "default",
                     "lr": a.lr, "seed": a.seed, "fresh": a.fresh, "overrides": a.overrides}}
    unknown = sorted(set(a.models.split(",")) - set(WORKLOADS))
    if unknown:
        p.error(f"--models {','.join(unknown)}: not one of {sorted(WORKLOADS)}")
    for name in a.models.split(","):
        path, n_params = bench_model(name, out.parent / "models")
        work = WORKLOADS[name]
        given = {f.name: getattr(a, f.name) for f in dataclasses.fields(Workload) if getattr(a, f.name)}
        work = dataclasses.replace(work, **given)
        entry: dict[str, Any] = {"parameters": n_params, "workload": dataclasses.asdict(work), "runs": {}}
        report["results"][name] = entry
        provider = pools if pools is not None else None if a.fresh else SharedPools()
        try:
            for k in ks:
                print(f"[{time.strftime('%H:%M:%S')}] {name} ({n_params / 1e6:.1f} M): k={k}, "
                      f"{a.warmup} + {work.steps} + {k} steps, load {load()}", flush=True)
                run_dir = out / f"{name}-k{k}-{time.strftime('%Y%m%d-%H%M%S')}"
                r = run_one(name, path, k, work, train_file, val_file, run_dir, a, pinned, provider or FreshPools())
                base = entry["runs"].get(str(ks[0]), r)
                r["speedup"] = base["step_s"] / r["step_s"]
                r["overlap_met"] = r["overlap"] <= TARGET_OVERLAP
                r["speedup_met"] = r["speedup"] >= TARGET_SPEEDUP
                entry["runs"][str(k)] = r
                print(f"  {r['step_s']:.2f} s/step (rollout {r['rollout_s']:.2f}, learner {r['learner_s']:.2f}), "
                      f"speed-up {r['speedup']:.2f}x, step / max {r['overlap']:.2f}, CPUs {r['cpu_utilisation']}",
                      flush=True)
                write_json(out / "results.json", report)
        finally:
            if pools is None and isinstance(provider, SharedPools):
                provider.close()
    report["machine"]["load_after"] = load()
    write_json(out / "results.json", report)
    print(markdown(report))
    print(f"wrote {out / 'results.json'}")
    return report


if __name__ == "__main__":
    main()
