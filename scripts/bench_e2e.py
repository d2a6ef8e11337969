"""rl-vlm's GRPO next to TRL's GRPOTrainer at equal settings, one after the other in one process.

Same random-weight Qwen2.5-VL, same easy-VQA colour prompts (images resized to 112x112 = 16
visual tokens for both), same settings: P prompts x G samples per step, <= T new tokens,
temperature 1, lr, no KL (beta 0), one optimizer step per step, the same reward (0.1 x format +
0.9 x accuracy, rl-vlm's own functions). What differs is the system:

- rl-vlm: 1 vLLM engine (all cores: it runs while the learners wait) + 2 DeepSpeed ZeRO-3 ranks
  (Ray actors, 1 thread each), old log-probs
  recomputed by the learners, weights synced into vLLM after every step.
- TRL: one process (all cores as torch threads), ``model.generate`` for sampling, no old-log-prob
  pass (``num_iterations=1``: TRL uses the detached current log-probs), no weight sync.

Reported per framework: steady-state seconds per step (median after ``--warmup`` steps),
completions/s and generated tokens/s, and the ratio rl-vlm / TRL.

    .venv/bin/python scripts/bench_e2e.py                      # tiny + m60m (~8 min on 2 cores)
    .venv/bin/python scripts/bench_e2e.py --smoke              # tiny, 2 steps
    .venv/bin/python scripts/bench_e2e.py --trl-threads 1 --rollout-threads 1   # on a loaded box
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, build_model, load, machine, median, write_json  # noqa: E402

MIN_PIXELS = MAX_PIXELS = 112 * 112  # configs/model/tiny.yaml


def data_files(cache: Path) -> tuple[Path, Path]:
    """easy-VQA colour questions: artifacts/ if ``rl-vlm prepare-data`` wrote them, else a small copy."""
    art = REPO / "artifacts" / "easy_vqa"
    if (art / "train_color.jsonl").exists():
        return art / "train_color.jsonl", art / "test_color.jsonl"
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train, _ = convert_easy_vqa(cache / "easy_vqa", max_train=400, max_test=40)
    return train.parent / "train_color.jsonl", train.parent / "test_color.jsonl"


def summarize(step_s: list[float], lengths: list[float], completions: int, warmup: int) -> dict[str, Any]:
    steady = step_s[warmup:] or step_s[-1:]
    lens = lengths[warmup:] or lengths[-1:]
    s = median(steady)
    return {"step_s": s, "step_s_all": step_s, "completions_per_s": completions / s,
            "tokens_per_s": completions * median(lens) / s, "response_length": median(lens)}


# ------------------------------------------------------------------------------------- rl-vlm
def run_rl_vlm(model: Path, train_file: Path, val_file: Path, out: Path, a: argparse.Namespace,
               old_logprobs: str = "recompute", pools: Any = None) -> dict[str, Any]:
    from rl_vlm.compose import compose
    from rl_vlm.driver.controller import train
    from rl_vlm.driver.tracking import read_metrics

    cfg = compose([
        f"model.path={model}", f"data.train_files=[{train_file}]", f"data.val_files=[{val_file}]",
        f"model.min_pixels={MIN_PIXELS}", f"model.max_pixels={MAX_PIXELS}",
        f"data.rollout_batch_size={a.prompts}", f"rollout.n={a.samples}", f"rollout.max_new_tokens={a.max_new_tokens}",
        "rollout.temperature=1.0", f"learner.mini_batch_size={a.prompts}",
        f"learner.micro_batch_size={a.micro_batch_size}", f"learner.lr={a.lr}", "algorithm.kl_coef=0.0",
        f"trainer.total_steps={a.steps}", "trainer.val_every=0", f"trainer.output_dir={out}",
        "trainer.progress_bar=false", "trainer.save_final_model=false", f"trainer.seed={a.seed}",
        f"learner.old_logprobs={old_logprobs}", f"rollout.torch_threads={a.rollout_threads or os.cpu_count() or 1}",
        *a.overrides,
    ])
    t0 = time.perf_counter()
    train(cfg, pools=pools)
    wall = time.perf_counter() - t0
    rows = [r for r in read_metrics(str(out)) if r["step"] >= 1]
    res = summarize([r["perf/step_s"] for r in rows], [r["response/length_mean"] for r in rows],
                    a.prompts * a.samples, a.warmup)
    phases = sorted({k for r in rows for k in r if k.startswith("time/")})
    res["phases"] = {k: median([r[k] for r in rows[a.warmup:] or rows[-1:] if k in r]) for k in phases}
    res["wall_s"] = wall
    return res


# ---------------------------------------------------------------------------------------- TRL
def trl_available() -> str | None:
    """None if TRL can run here, else why not."""
    try:
        import trl  # noqa: F401
    except ImportError as e:
        return f"TRL is not installed ({e}); install requirements/bench.txt"
    return None


def reward_fn(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """rl-vlm's default reward (0.1 x format + 0.9 x accuracy) in TRL's contract."""
    from rl_vlm.rewards.accuracy import accuracy_reward
    from rl_vlm.rewards.format import format_reward

    out = []
    for c, ans in zip(completions, answer):
        text = c[-1]["content"] if isinstance(c, list) else c
        row = {"answer": ans}
        out.append(0.1 * format_reward(text, row) + 0.9 * accuracy_reward(text, row))
    return out


def trl_dataset(train_file: Path, limit: int) -> Any:
    """The same rows as rl-vlm reads: conversational prompt (the think_answer template) + image."""
    from datasets import Dataset

    from rl_vlm.data.images import load_image, resize_image
    from rl_vlm.data.prompt import user_text

    rows = []
    with open(train_file, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            img = resize_image(load_image(r["images"][0], train_file.parent), MIN_PIXELS, MAX_PIXELS)
            rows.append({"prompt": [{"role": "user", "content": user_text(r["problem"], "think_answer")}],
                         "image": img, "answer": r["answer"]})
            if len(rows) >= limit:
                break
    return Dataset.from_list(rows)


def run_trl(model_dir: Path, train_file: Path, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoProcessor,
        Qwen2_5_VLForConditionalGeneration,
        TrainerCallback,
    )
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.trl_threads or os.cpu_count() or 1)
    completions = a.prompts * a.samples
    micro = min(a.micro_batch_size, completions)
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, use_vllm=False, seed=a.seed,
        per_device_train_batch_size=micro, gradient_accumulation_steps=completions // micro,
        num_generations=a.samples, max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, beta=0.0,
        epsilon=0.2, epsilon_high=0.28, loss_type="dapo", num_iterations=1, max_steps=a.steps,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
        disable_tqdm=True, log_completions=False, remove_unused_columns=False,
    )
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.image_processor.min_pixels = processor.image_processor.max_pixels = MIN_PIXELS
    processor.image_processor.size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                               attn_implementation="sdpa")
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args,
                          train_dataset=trl_dataset(train_file, limit=max(200, 4 * a.prompts * a.steps)),
                          processing_class=processor, callbacks=[StepTimer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    lengths = [h["completions/mean_length"] for h in logs]
    res = summarize(times, lengths or [float("nan")] * len(times), completions, a.warmup)
    res["wall_s"] = wall
    res["reward_mean"] = [h.get("reward") for h in logs]
    return res


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None, pools: Any = None) -> dict[str, Any]:
    """``argv``: the command line (default ``sys.argv``); ``pools``: a
    :class:`~rl_vlm.distributed.interfaces.PoolProvider` for the rl-vlm runs (default: a fresh
    system per run, as ``rl-vlm train`` starts one; the smoke tests pass their shared one)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,m60m", help="model sizes of bench_common.SIZES")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0: 8 for tiny, 5 otherwise)")
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the median")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--frameworks", default="rl_vlm,rl_vlm_rollout_lp,trl",
                   help="rl_vlm (π_old recomputed), rl_vlm_rollout_lp (learner.old_logprobs=rollout), trl")
    p.add_argument("--trl-threads", type=int, default=0, help="torch threads of the TRL process (0: all cores)")
    p.add_argument("--rollout-threads", type=int, default=0,
                   help="rl-vlm's rollout.torch_threads (0: all cores; the learners keep 1 thread per rank)")
    p.add_argument("--overrides", nargs="*", default=[],
                   help="extra config overrides for the rl-vlm runs, e.g. learner.num_ranks=1 learner.torch_threads=2")
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "e2e"))
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 1 warm-up step")
    a = p.parse_args(argv)
    if a.smoke:
        a.sizes, a.steps, a.warmup = "tiny", 2, 1
    out = Path(a.out)
    frameworks = a.frameworks.split(",")
    train_file, val_file = data_files(out.parent)
    report: dict[str, Any] = {"machine": machine(), "settings": {k: v for k, v in vars(a).items() if k != "out"},
                              "results": {}}
    skip = trl_available()
    if skip and "trl" in frameworks:
        print(f"skipping TRL: {skip}")
        report["trl_skipped"] = skip
        frameworks.remove("trl")
    for size in a.sizes.split(","):
        model, n_params = build_model(out.parent / "models" / size, size)
        steps = a.steps or (8 if size == "tiny" else 5)
        run_args = argparse.Namespace(**{**vars(a), "steps": steps})
        entry: dict[str, Any] = {"parameters": n_params, "steps": steps}
        for fw in frameworks:
            entry[f"{fw}_load_before"] = load()
            print(f"[{time.strftime('%H:%M:%S')}] {size} ({n_params / 1e6:.1f} M): {fw}, {steps} steps, load {load()}",
                  flush=True)
            run_dir = out / f"{size}-{fw}-{time.strftime('%Y%m%d-%H%M%S')}"
            if fw == "trl":
                entry[fw] = run_trl(model, train_file, run_dir, run_args)
            else:  # rl_vlm, or rl_vlm_rollout_lp: π_old from vLLM's sampling log-probs
                entry[fw] = run_rl_vlm(model, train_file, val_file, run_dir, run_args,
                                       "rollout" if fw == "rl_vlm_rollout_lp" else "recompute", pools)
            print(f"  {fw}: {entry[fw]['step_s']:.2f} s/step, {entry[fw]['completions_per_s']:.1f} completions/s, "
                  f"{entry[fw]['tokens_per_s']:.0f} tokens/s", flush=True)
        for fw, key in (("rl_vlm", "speedup_completions_per_s"), ("rl_vlm_rollout_lp", "speedup_rollout_lp")):
            if fw in entry and "trl" in entry:
                entry[key] = entry[fw]["completions_per_s"] / entry["trl"]["completions_per_s"]
                print(f"  {fw} / TRL completions/s: {entry[key]:.2f}x", flush=True)
        report["results"][size] = entry
        write_json(out / "results.json", report)
    report["machine"]["load_after"] = load()
    write_json(out / "results.json", report)
    return report


if __name__ == "__main__":
    main()
