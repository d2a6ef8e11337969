"""Weight-sync time and bandwidth: learner (2 ZeRO-3 ranks) -> every vLLM engine, by model size.

For each size a random-weight Qwen2.5-VL is built, a LearnerGroup and a RolloutGroup are started
exactly as ``rl-vlm train`` starts them (:mod:`rl_vlm.distributed.pools`, a fresh system per size),
and the production path is timed ``--repeats`` times:

    refs = learners.publish_weights()         # every ZeRO-3 rank: ray.put of its own partition, per bucket
    versions = rollout.load_weights(refs, v)  # every engine: ray.get, concatenate the ranks' parts, vLLM reload

``versions`` must come back as ``v`` from every engine (the new weights are visible). Mode
``lora`` starts a LoRA system of the same model (``model.lora.rank=--lora-rank``): the learners
publish the adapter alone and every engine loads it as a new vLLM adapter; its bytes are the
adapter's. Effective
bandwidth = parameter bytes / sync seconds. Next to it, in the same run: a plain in-process copy
of the same tensors (``dst.copy_(src)`` per parameter, 1 thread) -- the limit of moving those
bytes once on this machine. The engine side is split into object-store fetch and vLLM reload.

    .venv/bin/python scripts/bench_sync.py                    # tiny .. xl250m
    .venv/bin/python scripts/bench_sync.py --sizes tiny,xxl500m
    .venv/bin/python scripts/bench_sync.py --sizes m60m --modes object_store,lora   # full vs LoRA sync
    .venv/bin/python scripts/bench_sync.py --smoke            # tiny, 1 repeat
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, build_model, load, machine, median, write_json  # noqa: E402


def memcpy_baseline(shapes: list[tuple[int, ...]], repeats: int) -> float:
    """Seconds to copy tensors of ``shapes`` (fp32) into preallocated ones, 1 thread, median."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        src = [torch.randn(s) for s in shapes]
        dst = [torch.empty(s) for s in shapes]
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            for d, s in zip(dst, src):
                d.copy_(s)
            times.append(time.perf_counter() - t0)
        return median(times[1:])
    finally:
        torch.set_num_threads(threads)


def _engine_load_split(engine: Any, refs: list[list[Any]], version: int) -> tuple[float, float]:
    """Inside a rollout actor: (object-store fetch + concatenation s, vLLM reload s) of one sync."""
    from rl_vlm.distributed.sync.object_store import fetch_buckets

    t0 = time.perf_counter()
    buckets = fetch_buckets(refs)
    t1 = time.perf_counter()
    engine.update_weights(buckets, version)
    return t1 - t0, time.perf_counter() - t1


def measure_size(model: Path, n_params: int, a: argparse.Namespace, out: Path, modes: list[str],
                 provider: Any) -> dict[str, Any]:
    import ray
    import torch

    from rl_vlm.compose import compose
    from rl_vlm.validation import validate

    lora = modes == ["lora"]
    cfg = compose([f"model.path={model}", f"rollout.num_engines={a.engines}", "learner.num_ranks=2",
                   "data.rollout_batch_size=2", "rollout.n=2", "learner.mini_batch_size=2",
                   "learner.micro_batch_size=2", f"trainer.output_dir={out}"]
                  + (["cluster.weight_sync=collective"] if "collective" in modes else [])
                  + ([f"model.lora.rank={a.lora_rank}"] if lora else []))
    validate(cfg)
    t0 = time.perf_counter()
    # The pools exactly as `rl-vlm train` gets them (RolloutGroup / LearnerGroup, weight sync connected).
    pools = provider.acquire(cfg, with_learners=True)
    rollout, learners = pools.rollout, pools.learners
    ray.get([a_.pid.remote() for a_ in rollout.actors])  # engines up
    startup = time.perf_counter() - t0
    failed = True
    try:
        from safetensors import safe_open

        shapes, nbytes = [], 0
        for f in sorted(model.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    shape = tuple(st.get_slice(k).get_shape())
                    shapes.append(shape)
                    nbytes += 4 * int(torch.Size(shape).numel())
        results: dict[str, Any] = {}
        for mode in modes:
            rollout.collective = learners.collective = mode == "collective"
            gather, load_, total, fetch, reload_ = [], [], [], [], []
            for r in range(a.repeats + 1):  # the first is a warm-up
                v = r + 1
                t0 = time.perf_counter()
                refs = learners.publish_weights()
                t1 = time.perf_counter()
                versions = rollout.load_weights(refs, v)
                t2 = time.perf_counter()
                if versions != [v] * a.engines:
                    raise RuntimeError(f"engines report versions {versions}, expected {v}")
                gather.append(t1 - t0)
                load_.append(t2 - t1)
                total.append(t2 - t0)
                if mode == "lora":
                    nbytes = refs.num_bytes  # the adapter's, as published
                if mode == "object_store":  # the engine side once more, split (same buckets, a new version)
                    splits = ray.get([e.__ray_call__.remote(_engine_load_split, refs, 1000 + v) for e in rollout.actors])
                    fetch.append(max(s[0] for s in splits))
                    reload_.append(max(s[1] for s in splits))
                del refs
            sl = slice(1, None) if a.repeats else slice(0, None)
            copy_s = memcpy_baseline(shapes, max(a.repeats, 1))
            sync_s = median(total[sl])
            res = {"mode": mode, "parameters": n_params, "bytes": nbytes,
                   "lora_rank": a.lora_rank if mode == "lora" else 0,
                   "startup_s": startup, "sync_s": sync_s, "sync_s_all": total,
                   "gather_s": median(gather[sl]), "load_s": median(load_[sl]),
                   "engine_fetch_s": median(fetch[sl]) if fetch else float("nan"),
                   "engine_reload_s": median(reload_[sl]) if reload_ else float("nan"),
                   "memcpy_s": copy_s, "sync_gb_per_s": nbytes / sync_s / 1e9, "memcpy_gb_per_s": nbytes / copy_s / 1e9,
                   "load": load()}
            res["ratio_to_memcpy"] = res["sync_gb_per_s"] / res["memcpy_gb_per_s"]
            results[mode] = res
        failed = False
        return results
    finally:
        provider.release(failed=failed)


def main(argv: list[str] | None = None, pools: Any = None) -> dict[str, Any]:
    """``argv``: the command line (default ``sys.argv``); ``pools``: a
    :class:`~rl_vlm.distributed.interfaces.PoolProvider` (default: a fresh system per size, shut
    down after it; the smoke tests pass their shared one, which this leaves running)."""
    from rl_vlm.distributed.provider import FreshPools

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,s5m,m60m,l120m,xl250m")
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--modes", default="object_store,collective",
                   help="cluster.weight_sync transports to time (collective needs rl_vlm.distributed.sync.collective.connect_weight_sync)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lora-rank", type=int, default=16, help="adapter rank of mode lora")
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "sync"))
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 measured repeat")
    a = p.parse_args(argv)
    if a.smoke:
        a.sizes, a.repeats = "tiny", 1
    out = Path(a.out)
    modes = a.modes.split(",")
    report: dict[str, Any] = {"machine": machine(), "settings": {k: v for k, v in vars(a).items() if k != "out"},
                              "results": {}}
    provider = pools or FreshPools()
    for size in a.sizes.split(","):
        model, n = build_model(out.parent / "models" / size, size)
        print(f"[{time.strftime('%H:%M:%S')}] {size}: {n / 1e6:.1f} M parameters, load {load()}", flush=True)
        try:
            full = [m for m in modes if m != "lora"]
            measured = measure_size(model, n, a, out, full, provider) if full else {}
            if "lora" in modes:  # a LoRA system of its own (its engines serve adapters)
                measured.update(measure_size(model, n, a, out, ["lora"], provider))
        except Exception as e:  # e.g. Ray's OOM killer at 500 M on a small box: keep the other sizes
            print(f"  {size} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            report.setdefault("failed", {})[size] = f"{type(e).__name__}: {str(e)[:300]}"
            write_json(out / "results.json", report)
            continue
        for mode, r in measured.items():
            report["results"][f"{size}/{mode}"] = r
            print(f"  {mode}: sync {r['sync_s']:.3f} s ({r['sync_gb_per_s']:.2f} GB/s: learners {r['gather_s']:.3f}, "
                  f"load {r['load_s']:.3f} [fetch {r['engine_fetch_s']:.3f}, reload {r['engine_reload_s']:.3f}]); "
                  f"memcpy {r['memcpy_s']:.3f} s ({r['memcpy_gb_per_s']:.2f} GB/s); "
                  f"ratio {r['ratio_to_memcpy']:.3f}", flush=True)
        write_json(out / "results.json", report)
    report["machine"]["load_after"] = load()
    write_json(out / "results.json", report)
    return report


if __name__ == "__main__":
    main()
