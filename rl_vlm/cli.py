"""``rl-vlm`` command line.

    rl-vlm setup-cpu-demo [--rebuild]      # shipped tiny model + easy-VQA files under artifacts/,
                                           # DeepSpeed's CPU ops built (idempotent)
    rl-vlm build-tiny-model [--out DIR] [--seed N] [--warm-start-steps N]   # numbers depend on your CPU type
    rl-vlm build-tiny-model --shape real [--out DIR] [--seed N]   # Qwen2.5-VL's vocabulary and vision
                                           # geometry around narrow towers (random init, CPU-independent)
    rl-vlm prebuild-ops                    # JIT-build DeepSpeed's CPU ops now, not at the first run
    rl-vlm prepare-data [--out DIR]
    rl-vlm train [hydra overrides...]      # e.g. rl-vlm train experiment=grpo_tiny_cpu learner.lr=1e-4
    rl-vlm train -m algorithm=grpo,dr_grpo learner.lr=1e-4,3e-4   # sweep: runs one after another,
                                           # then <sweep dir>/summary.{csv,md} (docs/sweeps.md)
    rl-vlm sweep-summary multirun/<date> [--metric val/accuracy] [--mode max]
    rl-vlm eval model.path=runs/x/final rollout.val_n=8 rollout.val_temperature=1.0   # pass@k
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hydra.conf import HydraConf
    from omegaconf import DictConfig

    from rl_vlm.config import Config
    from rl_vlm.distributed.provider import SharedPools

DEFAULT_MODEL_DIR = "artifacts/tiny-qwen2.5-vl"
DEFAULT_REAL_SHAPE_DIR = "artifacts/real-shape-qwen2.5-vl"
DEFAULT_DATA_DIR = "artifacts/easy_vqa"
DEFAULT_WARM_START_STEPS = -1  # -1: the builder's own default
REBUILD_SEED = 1  # rl_vlm.models.tiny.REBUILD_SEED, without importing torch for --help


def _train(argv: list[str], mode: str = "train", pools: SharedPools | None = None) -> int:
    """``rl-vlm train`` / ``rl-vlm eval`` (and ``train -m``, a sweep) with Hydra overrides ``argv``.
    ``pools``: a running system to run on (the caller's, left running at the end) instead of
    fresh pools for a single run or the sweep's own :class:`SharedPools`."""
    import hydra

    from rl_vlm.compose import config_dir, from_omegaconf, register_base
    from rl_vlm.config import ConfigError
    from rl_vlm.validation import validate

    register_base()
    sweep: dict[str, Any] = {}  # filled by multirun jobs: the sweep dir, metric, failures, pools
    if pools is not None:
        sweep["pools"] = pools

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
    def run(raw: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and mode == "train":
            return _sweep_job(raw, hc, sweep, argv)
        try:
            cfg = validate(from_omegaconf(raw))
        except ConfigError as e:
            # One clear line instead of a traceback: the message names the key.
            print(f"config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if mode == "eval":
            import json

            from rl_vlm.driver.controller import evaluate

            metrics = evaluate(cfg, pools=pools)
            print(json.dumps(metrics, indent=2))
            return metrics.get("val/accuracy")
        return _run_training(cfg, pools)

    saved_argv, sys.argv = sys.argv, [sys.argv[0]] + argv  # Hydra reads its overrides from sys.argv
    try:
        run()
    finally:
        sys.argv = saved_argv
        if "pools" in sweep and sweep["pools"] is not pools:
            sweep["pools"].close()
    if "dir" in sweep:
        return _write_sweep_summary(str(sweep["dir"]), str(sweep["metric"]), str(sweep["mode"]),
                                    int(sweep.get("failed", 0)))
    return 0


def _run_training(cfg: Config, pools: SharedPools | None = None) -> float | None:
    """Train; returns the last validation accuracy (Hydra's job return value). ``pools``: a
    :class:`~rl_vlm.distributed.provider.SharedPools` the runs of a sweep share."""
    from rl_vlm.driver.controller import train
    from rl_vlm.driver.tracking import read_metrics

    run_dir = train(cfg, pools=pools)
    vals = [r["val/accuracy"] for r in read_metrics(run_dir) if r.get("val/accuracy") is not None]
    return vals[-1] if vals else None


def _sweep_job(raw: DictConfig, hc: HydraConf, sweep: dict[str, Any], argv: list[str]) -> float | None:
    """One run of ``rl-vlm train -m``: own output dir, seed rule and wandb group
    (:mod:`rl_vlm.driver.sweep`); a failing run is recorded and the sweep goes on."""
    import os
    import traceback

    from omegaconf import OmegaConf

    from rl_vlm.compose import from_omegaconf
    from rl_vlm.distributed.provider import SharedPools, close_shared_pools
    from rl_vlm.driver.sweep import run_settings, swept_keys, varying, write_run_record
    from rl_vlm.validation import validate

    job = int(hc.job.num)
    overrides = varying(list(hc.overrides.task), swept_keys(argv))
    t = raw.trainer
    rs = run_settings(str(hc.sweep.dir), job, overrides, int(t.seed), bool(t.seed_per_run),
                      str(t.wandb_run_name))
    sweep.update(dir=str(hc.sweep.dir), metric=str(t.sweep_metric), mode=str(t.sweep_mode))
    OmegaConf.update(raw, "trainer.output_dir", rs.output_dir)
    OmegaConf.update(raw, "trainer.seed", rs.seed)
    OmegaConf.update(raw, "trainer.wandb_run_name", rs.wandb_run_name)
    os.environ["WANDB_RUN_GROUP"] = rs.wandb_group  # wandb.init reads it when no group is passed
    print(f"sweep run {job}: {' '.join(overrides) or '(no overrides)'} seed={rs.seed} -> {rs.output_dir}",
          flush=True)
    write_run_record(rs.output_dir, job, overrides, rs.seed, "running")
    try:
        # One running system for the whole sweep: each run re-points the actors instead of
        # paying a system start (rl_vlm.distributed.provider.SharedPools).
        pools = sweep.setdefault("pools", SharedPools())
        value = _run_training(validate(from_omegaconf(raw)), pools)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - one bad combination must not end the sweep
        sweep["failed"] = int(sweep.get("failed", 0)) + 1
        print(f"sweep run {job} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        write_run_record(rs.output_dir, job, overrides, rs.seed, "failed",
                         "".join(traceback.format_exception_only(type(e), e)).strip())
        close_shared_pools()  # a run that died must not leave actors in an unknown state
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()  # nor a Ray instance started before its pools
        return None
    write_run_record(rs.output_dir, job, overrides, rs.seed, "ok")
    return value


def _write_sweep_summary(sweep_dir: str, metric: str, mode: str, failed: int = 0) -> int:
    from rl_vlm.driver.sweep import markdown_table, summarize, write_summary

    runs = summarize(sweep_dir, metric, mode)
    csv_path, md_path = write_summary(runs, sweep_dir, metric)
    print(markdown_table(["rank", "job", "overrides", f"final {metric}", "status"],
                         [[s.rank, s.job, " ".join(s.overrides), "" if s.final is None else f"{s.final:.4g}",
                           s.status] for s in runs]))
    print(f"sweep summary: {csv_path} {md_path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None, pools: SharedPools | None = None) -> int:
    """The command line (``argv``: its arguments, default ``sys.argv[1:]``). ``pools``: for
    ``train``/``eval`` called from Python, a running system the runs use and leave running (a
    notebook's, or a test suite's), as the benchmark scripts' ``main(argv, pools)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv and argv[0] in ("train", "eval"):
        return _train(argv[1:], mode=argv[0], pools=pools)
    parser = argparse.ArgumentParser(prog="rl-vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", help="train from the Hydra config tree (overrides follow)")
    sub.add_parser("eval", help="score model.path on data.val_files with pass@k (Hydra overrides follow)")
    b = sub.add_parser("build-tiny-model", help="build the tiny random-weight Qwen2.5-VL (+ warm start) and its "
                       "SHA256SUMS; the warm-started numbers you get depend on your CPU type (setup-cpu-demo copies "
                       "the shipped build instead); --shape real: the real-shape model (same bytes on every CPU)")
    b.add_argument("--shape", choices=["tiny", "real"], default="tiny",
                   help="tiny: the 0.66 M-parameter demo model; real: Qwen2.5-VL's vocabulary (151,936), special-token "
                   "ids and vision geometry (patch 14, merge 2, 112-px windows, 256-1,280 visual tokens per image) "
                   "around narrow towers, 41 M parameters, random init only (rl_vlm/models/real_shape.py)")
    b.add_argument("--out", default=None, help=f"default: {DEFAULT_MODEL_DIR} (tiny), {DEFAULT_REAL_SHAPE_DIR} (real)")
    b.add_argument("--seed", type=int, default=None, help=f"default: {REBUILD_SEED} (tiny), 0 (real: the pinned build)")
    b.add_argument("--warm-start-steps", type=int, default=DEFAULT_WARM_START_STEPS, help="--shape tiny only")
    p = sub.add_parser("prepare-data", help="convert the easy-VQA package into JSONL rows")
    p.add_argument("--out", default=DEFAULT_DATA_DIR)
    s = sub.add_parser("setup-cpu-demo", help="prepare-data, copy the shipped tiny model into artifacts/ (sums "
                       "checked) and prebuild-ops")
    s.add_argument("--seed", type=int, default=REBUILD_SEED,
                   help=f"a seed other than the shipped model's ({REBUILD_SEED}) implies --rebuild")
    s.add_argument("--rebuild", action="store_true",
                   help="build and warm-start the model here instead (the numbers you get depend on your CPU type)")
    sub.add_parser("prebuild-ops", help="JIT-build the DeepSpeed ops a CPU learner loads (cached; once per machine)")
    x = sub.add_parser("export", help="write a Hugging Face model directory from a training checkpoint")
    x.add_argument("checkpoint", help="a checkpoint directory (runs/x/checkpoints/step_N) or a run directory")
    x.add_argument("out_dir")
    x.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    w = sub.add_parser("sweep-summary", help="(re)write summary.csv/.md of a multirun directory")
    w.add_argument("sweep_dir")
    w.add_argument("--metric", default="val/accuracy")
    w.add_argument("--mode", choices=["max", "min"], default="max")
    args = parser.parse_args(argv)
    if args.cmd == "sweep-summary":
        return _write_sweep_summary(args.sweep_dir, args.metric, args.mode)
    if args.cmd == "export":
        from rl_vlm.checkpoint.export import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out_dir, args.dtype))
        return 0
    if args.cmd == "build-tiny-model" and args.shape == "real":
        if args.warm_start_steps != DEFAULT_WARM_START_STEPS:
            parser.error("--warm-start-steps applies to --shape tiny only (the real-shape model is random-init)")
        _build_real_shape(args.out or DEFAULT_REAL_SHAPE_DIR, 0 if args.seed is None else args.seed)
    elif args.cmd == "build-tiny-model":
        _build_model(args.out or DEFAULT_MODEL_DIR, REBUILD_SEED if args.seed is None else args.seed,
                     args.warm_start_steps)
    elif args.cmd == "prepare-data":
        _prepare_data(args.out)
    elif args.cmd == "prebuild-ops":
        _prebuild_ops()
    elif args.cmd == "setup-cpu-demo":
        _prepare_data(DEFAULT_DATA_DIR)
        if args.rebuild or args.seed != REBUILD_SEED:
            import shutil

            shutil.rmtree(DEFAULT_MODEL_DIR, ignore_errors=True)
            _build_model(DEFAULT_MODEL_DIR, args.seed, DEFAULT_WARM_START_STEPS)
        elif not _install_model(DEFAULT_MODEL_DIR):
            return 1
        _prebuild_ops()
    return 0


def _install_model(out: str) -> bool:
    """Copy the shipped warm-started model into ``out``; False (one line on stderr) when the
    shipped files do not match their sums."""
    from rl_vlm.models.tiny import SHIPPED_DIR, ShippedModelError, install_shipped

    try:
        copied = install_shipped(out)
    except ShippedModelError as e:
        print(f"error: the shipped tiny model is damaged ({e}); restore {SHIPPED_DIR} from git "
              "or build one here with `rl-vlm setup-cpu-demo --rebuild`", file=sys.stderr)
        return False
    print(f"tiny model copied to {out} (sha256 checked)" if copied else f"{out} is up to date")
    return True


def _prebuild_ops() -> None:
    """Build the DeepSpeed op a CPU learner JIT-compiles at start-up: ``deepspeed.init_distributed``
    loads the shared-memory comm op (``deepspeed_shm_comm``); CPU Adam is never built, the learner
    asks for ``torch_adam``. torch caches the build under ~/.cache/torch_extensions, so a second
    call only loads it."""
    import time
    from pathlib import Path

    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() != "cpu":
        print(f"DeepSpeed accelerator is {accel.device_name()}: no CPU ops to build")
        return
    builder = accel.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        print("DeepSpeed's shared-memory comm op does not apply here (gloo only): nothing to build")
        return
    from torch.utils import cpp_extension

    # torch's own cache layout (private helper; a miss only changes the wording below).
    try:
        cached = (Path(cpp_extension._get_build_directory(builder.NAME, False)) / f"{builder.NAME}.so").exists()
    except Exception:  # noqa: BLE001
        cached = False
    if cached:
        print(f"DeepSpeed's CPU ops: loading the cached {builder.NAME} (rebuilt if sources or flags changed)",
              flush=True)
    else:
        print(f"building DeepSpeed's CPU ops (once per machine, 1-2 min): {builder.NAME}", flush=True)
    t0 = time.perf_counter()
    builder.load()
    print(f"DeepSpeed's CPU ops ready ({time.perf_counter() - t0:.1f} s)", flush=True)


def _build_model(out: str, seed: int, steps: int) -> None:
    from rl_vlm.models.tiny import build_and_warm_start

    kwargs = {} if steps < 0 else {"warm_start_steps": steps}
    path = build_and_warm_start(out, seed=seed, **kwargs)
    print(f"tiny model written to {path}")


def _build_real_shape(out: str, seed: int) -> None:
    from rl_vlm.models.real_shape import build_real_shape_model

    path = build_real_shape_model(out, seed=seed)
    print(f"real-shape model written to {path}")


def _prepare_data(out: str) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train, test = convert_easy_vqa(out)
    print(f"easy-VQA rows written to {train} and {test}")


if __name__ == "__main__":
    raise SystemExit(main())
