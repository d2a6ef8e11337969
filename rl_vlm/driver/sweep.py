"""Hyperparameter sweeps (``rl-vlm train -m a=1,2 b=x,y``): the per-run rules and the summary.

Hydra's basic launcher runs the cartesian product one run after another in the driver process
(each run starts and shuts down its own Ray pools). Per run j (``hydra.job.num``):

* output directory ``<hydra.sweep.dir>/<j>`` (``trainer.output_dir`` is replaced);
* seed ``trainer.seed``, or ``trainer.seed + j`` when ``trainer.seed_per_run=true``;
* wandb group = the sweep directory's name, wandb run name = the run's overrides;
* ``sweep_run.json`` in the run directory records its number, overrides, seed and status.

At the end :func:`summarize` reads every run's ``metrics.jsonl`` and ranks the runs by the last
value of ``trainer.sweep_metric``; :func:`write_summary` writes ``summary.csv`` and ``summary.md``
into the sweep directory. Pure functions over files: no Ray, no Hydra.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

RUN_FILE = "sweep_run.json"


@dataclass(frozen=True)
class RunSettings:
    """What a sweep changes in run ``job`` on top of its composed config."""

    output_dir: str
    seed: int
    wandb_group: str
    wandb_run_name: str


_SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "shuffle(", "sort(", "tag(")


def swept_keys(argv: list[str]) -> set[str]:
    """Keys that a multirun command line sweeps (``k=a,b`` or a Hydra sweep function); the other
    overrides are fixed for every run and left out of run names and the summary."""
    keys = set()
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        if _top_level_comma(value) or value.startswith(_SWEEP_FUNCTIONS):
            keys.add(key.lstrip("+~"))
    return keys


def _top_level_comma(value: str) -> bool:
    """``a,b`` sweeps; ``[a,b]``, ``{k: a, j: b}``, quoted or escaped commas do not."""
    depth, quote, prev = 0, "", ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0 and prev != "\\":
            return True
        prev = ch
    return False


def varying(overrides: list[str], keys: set[str]) -> list[str]:
    """The ``key=value`` pairs of ``overrides`` whose key is swept."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]


def run_settings(sweep_dir: str, job: int, overrides: list[str], base_seed: int, seed_per_run: bool,
                 wandb_run_name: str = "") -> RunSettings:
    """The per-run rules above; ``overrides`` are the run's swept ``key=value`` pairs."""
    name = wandb_run_name or (",".join(overrides) if overrides else f"run{job}")
    return RunSettings(output_dir=os.path.join(sweep_dir, str(job)),
                       seed=base_seed + job if seed_per_run else base_seed,
                       wandb_group=os.path.basename(os.path.normpath(sweep_dir)), wandb_run_name=name)


def write_run_record(run_dir: str, job: int, overrides: list[str], seed: int, status: str,
                     error: str = "") -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, RUN_FILE), "w", encoding="utf-8") as f:
        json.dump({"job": job, "overrides": overrides, "seed": seed, "status": status, "error": error}, f)


@dataclass(frozen=True)
class RunSummary:
    job: int
    overrides: list[str]
    seed: int | None
    status: str
    """``ok``, ``failed`` or ``running`` (no final record), from ``sweep_run.json``."""
    final: float | None
    """Last value of the metric in metrics.jsonl (None if never reported)."""
    final_step: int | None
    best: float | None
    """Best value over all steps (max or min by the sweep mode)."""
    best_step: int | None
    run_dir: str
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                    break
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(sweep_dir: str, metric: str = "val/accuracy", mode: str = "max") -> list[RunSummary]:
    """One :class:`RunSummary` per run directory under ``sweep_dir`` (a directory holding
    ``sweep_run.json`` or ``metrics.jsonl``), ranked by the final ``metric`` (best first; runs
    without it last, by job number). Ties keep job order."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    runs = []
    for name in os.listdir(sweep_dir):
        run_dir = os.path.join(sweep_dir, name)
        rec_path = os.path.join(run_dir, RUN_FILE)
        if not os.path.isdir(run_dir) or not (os.path.exists(rec_path)
                                              or os.path.exists(os.path.join(run_dir, "metrics.jsonl"))):
            continue
        rec = json.load(open(rec_path, encoding="utf-8")) if os.path.exists(rec_path) else {}
        job = rec.get("job", int(name) if name.isdigit() else -1)
        points = [(r.get("step"), r[metric]) for r in _read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
                  if _is_number(r.get(metric))]
        final = points[-1] if points else (None, None)
        pick = max if mode == "max" else min
        best = pick(points, key=lambda p: p[1]) if points else (None, None)
        runs.append(RunSummary(job=job, overrides=list(rec.get("overrides", [])), seed=rec.get("seed"),
                               status=rec.get("status", "unknown"), final=final[1], final_step=final[0],
                               best=best[1], best_step=best[0], run_dir=run_dir))
    sign = -1.0 if mode == "max" else 1.0
    runs.sort(key=lambda s: (s.final is None, sign * s.final if s.final is not None else 0.0, s.job))
    return [RunSummary(**{**s.__dict__, "rank": i + 1}) for i, s in enumerate(runs)]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def write_summary(runs: list[RunSummary], sweep_dir: str, metric: str) -> tuple[str, str]:
    """``<sweep_dir>/summary.csv`` and ``summary.md`` (a Markdown table); returns both paths."""
    header = ["rank", "job", "overrides", "seed", "status", f"final {metric}", "final step",
              f"best {metric}", "best step", "run_dir"]
    rows = [[s.rank, s.job, " ".join(s.overrides), "" if s.seed is None else s.seed, s.status, _fmt(s.final),
             "" if s.final_step is None else s.final_step, _fmt(s.best),
             "" if s.best_step is None else s.best_step, s.run_dir] for s in runs]
    csv_path, md_path = os.path.join(sweep_dir, "summary.csv"), os.path.join(sweep_dir, "summary.md")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown_table(header, rows) + "\n")
    return csv_path, md_path


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
