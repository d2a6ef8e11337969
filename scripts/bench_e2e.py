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
completions/s, generated tokens/s and mean answer length, and the ratio rl-vlm / TRL.

The ``real_shape`` row (``--sizes real_shape``; not in the default sizes) runs the real-shape model
(rl_vlm/models/real_shape.py: Qwen2.5-VL's 151,936-token vocabulary, token ids and vision geometry
around narrow towers; ``artifacts/real-shape-qwen2.5-vl`` if ``rl-vlm build-tiny-model --shape
real`` wrote it, else built into the bench cache the same way). rl-vlm runs with its config group
(``model=real_shape``: pixel bounds 200,704-1,003,520 = 256-1,280 visual tokens, so the 64x64
easy-VQA images become 448x448 = 256 visual tokens; ``--real-image-pixels N`` fixes min = max = N
pixels instead); TRL's processor gets the same bounds and the same pre-resized images. The row has
its own defaults (2 prompts x 4 samples, <= 256 new tokens, micro-batches of 4, 3 steps of which 1
warm-up; flags given on the command line win), both frameworks read the same P x steps prompts,
and both stop an answer only at the model's EOS ids (random weights all but never sample them, so
answers run to the cap; the mean length is printed per framework). It prints rl-vlm / TRL
completions/s and whether the issue's target (>= 2x TRL at the real vocabulary and >= 256-token
answers) is met.

    .venv/bin/python scripts/bench_e2e.py                      # tiny + m60m (~8 min on 2 cores)
    .venv/bin/python scripts/bench_e2e.py --smoke              # tiny, 2 steps
    .venv/bin/python scripts/bench_e2e.py --trl-threads 1 --rollout-threads 1   # on a loaded box
    .venv/bin/python scripts/bench_e2e.py --sizes real_shape --frameworks rl_vlm,trl   # real shapes vs TRL
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
from bench_common import (  # noqa: E402
    REAL_SHAPE,
    REPO,
    build_model,
    load,
    machine,
    median,
    real_shape_model,
    write_json,
)

MIN_PIXELS = MAX_PIXELS = 112 * 112  # configs/model/tiny.yaml

DEFAULTS: dict[str, int] = {"prompts": 4, "samples": 8, "max_new_tokens": 32, "micro_batch_size": 16, "warmup": 2}
"""What the per-step flags default to (the tiny/m60m/... rows)."""
REAL_ROW: dict[str, int] = {"prompts": 2, "samples": 4, "max_new_tokens": 256, "micro_batch_size": 4, "steps": 3,
                            "warmup": 1}
"""The real-shape row's own defaults (a flag given on the command line wins): rl-vlm + TRL in
about 15 min on 2 cores."""
REAL_SMOKE: dict[str, int] = {"prompts": 1, "samples": 2}
"""On top of :data:`REAL_ROW` with ``--smoke --sizes real_shape`` (which also sets 2 steps, 1 warm-up)."""
ROW_KEYS = ("prompts", "samples", "max_new_tokens", "micro_batch_size", "lr", "steps", "warmup", "seed")
TARGET_RATIO = 2.0
"""The issue's target: rl-vlm >= 2x TRL's completions/s at the real vocabulary ..."""
TARGET_ANSWER_TOKENS = 256
"""... and answers of >= 256 tokens."""
STOP_RULE = ("both frameworks stop an answer at the model's EOS ids (<|im_end|> 151645, <|endoftext|> 151643; "
             "generation_config.json) and at max_new_tokens; neither ignores EOS or forces a minimum length")


def data_files(cache: Path) -> tuple[Path, Path]:
    """easy-VQA colour questions: artifacts/ if ``rl-vlm prepare-data`` wrote them, else a small copy."""
    art = REPO / "artifacts" / "easy_vqa"
    if (art / "train_color.jsonl").exists():
        return art / "train_color.jsonl", art / "test_color.jsonl"
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train, _ = convert_easy_vqa(cache / "easy_vqa", max_train=400, max_test=40)
    return train.parent / "train_color.jsonl", train.parent / "test_color.jsonl"


def prompt_subset(src: Path, n: int, dest: Path) -> Path:
    """The first ``n`` rows of ``src`` written to ``dest`` with absolute image paths: the real-shape
    row's prompts, the same set for both frameworks."""
    rows = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            r["images"] = [im if not isinstance(im, str) or os.path.isabs(im) else str((src.parent / im).resolve())
                           for im in r["images"]]
            rows.append(r)
            if len(rows) >= n:
                break
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return dest


def real_shape_inputs(model: Path, train_file: Path, val_file: Path, data_dir: Path,
                      a: argparse.Namespace) -> dict[str, Any]:
    """The real-shape row's rl-vlm model overrides, the pixel bounds they resolve to (TRL gets the
    same), its prompt files, and the visual tokens per image those bounds give."""
    from PIL import Image

    from rl_vlm.compose import compose
    from rl_vlm.data.images import FACTOR, load_image, smart_resize

    pixels = ([f"model.min_pixels={a.real_image_pixels}", f"model.max_pixels={a.real_image_pixels}"]
              if a.real_image_pixels else [])
    overrides = ["model=real_shape", f"model.path={model}", *pixels]
    m = compose(overrides).model
    train = prompt_subset(train_file, a.prompts * a.steps, data_dir / "train.jsonl")
    val = prompt_subset(val_file, 2, data_dir / "val.jsonl")
    tokens = set()
    with open(train, encoding="utf-8") as f:
        for line in f:
            img: Image.Image = load_image(json.loads(line)["images"][0], train.parent)
            h, w = smart_resize(img.height, img.width, FACTOR, m.min_pixels, m.max_pixels)
            tokens.add((h // FACTOR) * (w // FACTOR))
    info = json.loads((model / "build_info.json").read_text())
    return {"overrides": overrides, "min_pixels": m.min_pixels, "max_pixels": m.max_pixels,
            "max_prompt_length": compose(overrides).data.max_prompt_length, "train_file": train, "val_file": val,
            "visual_tokens": sorted(tokens), "vocab_size": info.get("vocab_size")}


def row_settings(size: str, a: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """``a`` with the row's own defaults (:data:`REAL_ROW` for ``real_shape``) where no flag set them."""
    d = dict(vars(a))
    if size == REAL_SHAPE:
        row = {**REAL_ROW, **(REAL_SMOKE if a.smoke else {})}
        d.update({k: v for k, v in row.items() if k not in explicit})
        if "micro_batch_size" not in explicit:
            # rl-vlm's micro-batch must divide what each learner rank gets per step
            # (prompts x samples / ranks), e.g. 1 for 1 x 2 on 2 ranks; TRL gets the same.
            from rl_vlm.config import LearnerConfig

            ranks = next((int(o.split("=", 1)[1]) for o in a.overrides if o.startswith("learner.num_ranks=")),
                         LearnerConfig().num_ranks)
            per_rank = max(1, d["prompts"] * d["samples"] // ranks)
            micro = min(d["micro_batch_size"], per_rank)
            while per_rank % micro:
                micro -= 1
            d["micro_batch_size"] = micro
    d["steps"] = d["steps"] or (8 if size == "tiny" else 5)
    return argparse.Namespace(**d)


def target_line(fw: str, ratio: float, lengths: dict[str, float]) -> tuple[bool | None, str]:
    """Whether the issue's target holds for ``fw`` / TRL (None: answers too short to say), and the line saying so."""
    short = {k: v for k, v in lengths.items() if not v >= TARGET_ANSWER_TOKENS}
    head = (f"target: {fw} >= {TARGET_RATIO:.0f}x TRL's completions/s at the real vocabulary with "
            f">= {TARGET_ANSWER_TOKENS}-token answers:")
    if short:
        return None, (f"{head} not measured, answers averaged "
                      + ", ".join(f"{k} {v:.1f}" for k, v in short.items())
                      + f" tokens (< {TARGET_ANSWER_TOKENS}; --max-new-tokens >= {TARGET_ANSWER_TOKENS})")
    met = ratio >= TARGET_RATIO
    return met, f"{head} {'met' if met else 'NOT met'} ({ratio:.2f}x)"


def summarize(step_s: list[float], lengths: list[float], completions: int, warmup: int) -> dict[str, Any]:
    steady = step_s[warmup:] or step_s[-1:]
    lens = lengths[warmup:] or lengths[-1:]
    s = median(steady)
    return {"step_s": s, "step_s_all": step_s, "completions_per_s": completions / s,
            "tokens_per_s": completions * median(lens) / s, "response_length": median(lens)}


# ------------------------------------------------------------------------------------- rl-vlm
def run_rl_vlm(model: Path, train_file: Path, val_file: Path, out: Path, a: argparse.Namespace,
               old_logprobs: str = "recompute", pools: Any = None,
               model_overrides: list[str] | None = None) -> dict[str, Any]:
    """``model_overrides``: the model's config (default: ``model.path`` + the tiny rows' 112x112 pixels)."""
    from rl_vlm.compose import compose
    from rl_vlm.driver.controller import train
    from rl_vlm.driver.tracking import read_metrics

    model_args = model_overrides or [f"model.path={model}", f"model.min_pixels={MIN_PIXELS}",
                                     f"model.max_pixels={MAX_PIXELS}"]
    cfg = compose([
        *model_args, f"data.train_files=[{train_file}]", f"data.val_files=[{val_file}]",
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
    steady = rows[a.warmup:] or rows[-1:]
    res["phases"] = {k: median([r[k] for r in steady if k in r]) for k in phases}
    for key, metric in (("truncated_frac", "response/truncated_frac"), ("prompt_length", "prompt/length_mean")):
        res[key] = median([r[metric] for r in steady if metric in r])
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
    for c, ans in zip(completions, answer, strict=True):
        text = c[-1]["content"] if isinstance(c, list) else c
        row = {"answer": ans}
        out.append(0.1 * format_reward(text, row) + 0.9 * accuracy_reward(text, row))
    return out


def trl_dataset(train_file: Path, limit: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Any:
    """The same rows as rl-vlm reads: conversational prompt (the think_answer template) + image,
    resized as rl-vlm resizes it (``min_pixels``/``max_pixels``)."""
    from datasets import Dataset

    from rl_vlm.data.images import load_image, resize_image
    from rl_vlm.data.prompt import user_text

    rows = []
    with open(train_file, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            img = resize_image(load_image(r["images"][0], train_file.parent), min_pixels, max_pixels)
            rows.append({"prompt": [{"role": "user", "content": user_text(r["problem"], "think_answer")}],
                         "image": img, "answer": r["answer"]})
            if len(rows) >= limit:
                break
    return Dataset.from_list(rows)


def run_trl(model_dir: Path, train_file: Path, out: Path, a: argparse.Namespace,
            pixels: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS), dataset_limit: int = 0) -> dict[str, Any]:
    """``pixels``: (min, max) of the image processor and of the pre-resize, rl-vlm's for the row;
    ``dataset_limit``: rows read from ``train_file`` (0: ``max(200, 4 x prompts x steps)``)."""
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
    min_pixels, max_pixels = pixels
    processor = AutoProcessor.from_pretrained(model_dir)
    if hasattr(processor.image_processor, "min_pixels"):  # older transformers; 5.x reads ``size`` only (and
        # warns that min_pixels/max_pixels attributes are deprecated, to be removed in 5.23)
        processor.image_processor.min_pixels, processor.image_processor.max_pixels = min_pixels, max_pixels
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                               attn_implementation="sdpa")
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    dataset = trl_dataset(train_file, dataset_limit or max(200, 4 * a.prompts * a.steps), min_pixels, max_pixels)
    # What TRL's processor makes of the first image: visual tokens = grid patches / merge^2.
    grid = processor.image_processor(images=[dataset[0]["image"]], return_tensors="pt")["image_grid_thw"][0]
    visual_tokens = int(grid.prod()) // processor.image_processor.merge_size ** 2
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                          processing_class=processor, callbacks=[StepTimer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    lengths = [h["completions/mean_length"] for h in logs]
    res = summarize(times, lengths or [float("nan")] * len(times), completions, a.warmup)
    res["wall_s"] = wall
    res["reward_mean"] = [h.get("reward") for h in logs]
    steady = logs[a.warmup:] or logs[-1:]
    res["truncated_frac"] = median([h["completions/clipped_ratio"] for h in steady if "completions/clipped_ratio" in h])
    # num_tokens: prompt + completion tokens seen so far (every completion counts its prompt).
    seen = [0.0] + [float(h.get("num_tokens", float("nan"))) for h in logs]
    prompt_len = [(seen[i + 1] - seen[i]) / completions - n for i, n in enumerate(lengths)]
    res["prompt_length"] = median(prompt_len[a.warmup:] or prompt_len[-1:])
    res["visual_tokens"] = visual_tokens
    return res


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None, pools: Any = None) -> dict[str, Any]:
    """``argv``: the command line (default ``sys.argv``); ``pools``: a
    :class:`~rl_vlm.distributed.interfaces.PoolProvider` for the rl-vlm runs (default: a fresh
    system per run, as ``rl-vlm train`` starts one; the smoke tests pass their shared one)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None,
                   help="model sizes of bench_common.SIZES, and/or real_shape (default tiny,m60m; --smoke: tiny)")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0: 8 for tiny, 3 for real_shape, 5 otherwise)")
    p.add_argument("--warmup", type=int, default=None, help="leading steps left out of the median (2; real_shape 1)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step (4; real_shape 2)")
    p.add_argument("--samples", type=int, default=None, help="samples per prompt (8; real_shape 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="32; real_shape 256")
    p.add_argument("--micro-batch-size", type=int, default=None, help="sequences per micro-batch (16; real_shape 4)")
    p.add_argument("--real-image-pixels", type=int, default=0,
                   help="real_shape: min = max pixels of every image (0: the model=real_shape bounds, 200704-1003520, "
                        "which make easy-VQA's 64x64 images 448x448 = 256 visual tokens; 802816 = 896x896 = 1,024)")
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
    p.add_argument("--smoke", action="store_true",
                   help="tiny model (or --sizes), 2 steps, 1 warm-up step; real_shape: 1 prompt x 2 samples")
    a = p.parse_args(argv)
    explicit = {k for k in DEFAULTS if getattr(a, k) is not None} | ({"steps"} if a.steps else set())
    for k, v in DEFAULTS.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.smoke:
        a.sizes, a.steps, a.warmup = a.sizes or "tiny", 2, 1
        explicit |= {"steps", "warmup"}
    a.sizes = a.sizes or "tiny,m60m"
    out = Path(a.out)
    frameworks = a.frameworks.split(",")
    train_file, val_file = data_files(out.parent)
    report: dict[str, Any] = {"machine": machine(), "settings": {k: v for k, v in vars(a).items() if k != "out"},
                              "results": {}}
    m = report["machine"]
    print(f"machine: {m['cpus']} CPUs, {m['cpu_model']} ({m['isa']}: {', '.join(m['isa_features']) or '-'}; torch "
          f"kernels {m['torch_cpu_capability']}), {m['mem_gib']} GiB, load {m['load']}; "
          + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), flush=True)
    skip = trl_available()
    if skip and "trl" in frameworks:
        print(f"skipping TRL: {skip}")
        report["trl_skipped"] = skip
        frameworks.remove("trl")
    for size in a.sizes.split(","):
        run_args = row_settings(size, a, explicit)
        steps = run_args.steps
        real: dict[str, Any] | None = None
        row_train, row_val = train_file, val_file
        if size == REAL_SHAPE:
            model, n_params = real_shape_model(out.parent / "models" / REAL_SHAPE)
            real = real_shape_inputs(model, train_file, val_file, out / f"{size}-prompts", run_args)
            row_train, row_val = real["train_file"], real["val_file"]
        else:
            model, n_params = build_model(out.parent / "models" / size, size)
        entry: dict[str, Any] = {"parameters": n_params, "steps": steps,
                                 "settings": {k: getattr(run_args, k) for k in ROW_KEYS}}
        if real is not None:
            entry.update(model=str(model), vocab_size=real["vocab_size"], min_pixels=real["min_pixels"],
                         max_pixels=real["max_pixels"], max_prompt_length=real["max_prompt_length"],
                         visual_tokens=real["visual_tokens"], stop_rule=STOP_RULE, prompts_file=str(row_train))
            print(f"{size}: {model} (vocabulary {real['vocab_size']:,}), {run_args.prompts} prompts x "
                  f"{run_args.samples} samples, <= {run_args.max_new_tokens} new tokens, micro-batch "
                  f"{run_args.micro_batch_size}, {steps} steps ({run_args.warmup} warm-up); pixels "
                  f"{real['min_pixels']:,}-{real['max_pixels']:,} on both sides -> {real['visual_tokens']} visual "
                  f"tokens per image; {STOP_RULE}", flush=True)
        for fw in frameworks:
            entry[f"{fw}_load_before"] = load()
            print(f"[{time.strftime('%H:%M:%S')}] {size} ({n_params / 1e6:.1f} M): {fw}, {steps} steps, load {load()}",
                  flush=True)
            run_dir = out / f"{size}-{fw}-{time.strftime('%Y%m%d-%H%M%S')}"
            if fw == "trl":
                if real is not None:
                    entry[fw] = run_trl(model, row_train, run_dir, run_args, (real["min_pixels"], real["max_pixels"]),
                                        dataset_limit=run_args.prompts * steps)
                else:
                    entry[fw] = run_trl(model, train_file, run_dir, run_args)
            else:  # rl_vlm, or rl_vlm_rollout_lp: π_old from vLLM's sampling log-probs
                entry[fw] = run_rl_vlm(model, row_train, row_val, run_dir, run_args,
                                       "rollout" if fw == "rl_vlm_rollout_lp" else "recompute", pools,
                                       real["overrides"] if real is not None else None)
            r = entry[fw]
            extra = ""
            if real is not None:
                extra = (f", truncated {r.get('truncated_frac', float('nan')):.2f}, prompt "
                         f"{r.get('prompt_length', float('nan')):.0f} tokens")
            print(f"  {fw}: {r['step_s']:.2f} s/step, {r['completions_per_s']:.2f} completions/s, "
                  f"{r['tokens_per_s']:.0f} tokens/s, mean completion length {r['response_length']:.1f}{extra}",
                  flush=True)
        for fw, key in (("rl_vlm", "speedup_completions_per_s"), ("rl_vlm_rollout_lp", "speedup_rollout_lp")):
            if fw in entry and "trl" in entry:
                entry[key] = entry[fw]["completions_per_s"] / entry["trl"]["completions_per_s"]
                print(f"  {fw} / TRL completions/s: {entry[key]:.2f}x", flush=True)
                if real is not None:
                    met, line = target_line(fw, entry[key], {fw: entry[fw]["response_length"],
                                                             "trl": entry["trl"]["response_length"]})
                    entry.setdefault("target", {})[fw] = {"ratio": TARGET_RATIO,
                                                          "min_answer_tokens": TARGET_ANSWER_TOKENS, "met": met,
                                                          "line": line}
                    print(f"  {line}", flush=True)
        report["results"][size] = entry
        write_json(out / "results.json", report)
    report["machine"]["load_after"] = load()
    write_json(out / "results.json", report)
    return report


if __name__ == "__main__":
    main()
