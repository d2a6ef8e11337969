"""Where metrics go: the console (a progress bar plus a readable line per step), a JSONL file
in the run directory (one object per step, the source of truth), and wandb when enabled."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rl_vlm.config import TrainerConfig

PROMPTS_FILE = "prompts.jsonl"
"""Per step, the uids of the prompts trained on (:meth:`Tracker.log_prompts`)."""

# What the console line shows, in order, when present.
CONSOLE_KEYS = ("reward/mean", "reward/accuracy", "val/accuracy", "response/length_mean", "actor/kl",
                "actor/entropy", "actor/clip_frac", "perf/step_s")


class PhaseTimer:
    """Named, timed phases of one step: ``with timer("rollout"): ...`` -> ``time/rollout_s``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{name}_s"] = self.times.get(f"time/{name}_s", 0.0) + time.perf_counter() - t0


class Tracker:
    def __init__(self, cfg: TrainerConfig, run_dir: str, config_dict: dict[str, Any], total_steps: int,
                 start_step: int = 0) -> None:
        self.cfg = cfg
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        # A resumed (or restarted) run re-does the steps after its checkpoint: drop their records
        # so every step appears exactly once.
        _truncate_metrics(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        prompts_path = os.path.join(run_dir, PROMPTS_FILE)
        _truncate_metrics(prompts_path, start_step)
        self._prompts = open(prompts_path, "a", encoding="utf-8")
        self._bar = None
        if cfg.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self._wandb = None
        if cfg.wandb_mode != "disabled":
            import wandb

            # The run id lives in the run directory, so a resumed run continues the same wandb run.
            id_file = os.path.join(run_dir, "wandb_run_id")
            if start_step > 0 and os.path.exists(id_file):
                with open(id_file, encoding="utf-8") as f:
                    run_id = f.read().strip()
            else:
                run_id = secrets.token_hex(4)  # wandb ids: short lowercase alphanumerics
                with open(id_file, "w", encoding="utf-8") as f:
                    f.write(run_id)
            self._wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or os.path.basename(run_dir),
                                     dir=run_dir, mode=cfg.wandb_mode, config=config_dict, id=run_id,
                                     resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if step % max(self.cfg.log_every, 1) == 0 or "val/accuracy" in metrics:
            shown = "  ".join(f"{k.split('/')[-1] if k != 'val/accuracy' else 'val_acc'}={metrics[k]:.3g}"
                              for k in CONSOLE_KEYS if k in metrics)
            self.write(f"step {step}: {shown}")

    def log_prompts(self, step: int, weight_version: int, uids: list[str]) -> None:
        """``prompts.jsonl``: the prompts step ``step`` trained on and the weight version that
        sampled them (one record per step, the steps after a resume's checkpoint re-done)."""
        self._prompts.write(json.dumps({"step": step, "weight_version": weight_version, "uids": uids}) + "\n")
        self._prompts.flush()

    def advance(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._file.close()
        self._prompts.close()
        if self._wandb is not None:
            self._wandb.finish()


def _truncate_metrics(path: str, last_step: int) -> None:
    """Keep only the records of steps <= ``last_step`` (atomically; a torn last line is dropped)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                continue
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """All records of ``<run_dir>/metrics.jsonl``."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
