"""``rl-vlm`` command line.

    rl-vlm setup-cpu-demo                  # tiny model + easy-VQA files under artifacts/ (idempotent)
    rl-vlm build-tiny-model [--out DIR] [--seed N] [--warm-start-steps N]
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

DEFAULT_MODEL_DIR = "artifacts/tiny-qwen2.5-vl"
DEFAULT_DATA_DIR = "artifacts/easy_vqa"
DEFAULT_WARM_START_STEPS = -1  # -1: the builder's own default


def _train(argv: list[str], mode: str = "train") -> int:
    import hydra
    from omegaconf import DictConfig

    from rl_vlm.compose import config_dir, from_omegaconf, register_base
    from rl_vlm.config import ConfigError
    from rl_vlm.validation import validate

    register_base()
    sweep: dict[str, object] = {}  # filled by multirun jobs: the sweep dir, metric, failures

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

            from rl_vlm.controller import evaluate

            metrics = evaluate(cfg)
            print(json.dumps(metrics, indent=2))
            return metrics.get("val/accuracy")
        return _run_training(cfg)

    sys.argv = [sys.argv[0]] + argv
    run()
    if "dir" in sweep:
        return _write_sweep_summary(str(sweep["dir"]), str(sweep["metric"]), str(sweep["mode"]),
                                    int(sweep.get("failed", 0)))
    return 0


def _run_training(cfg: object) -> float | None:
    """Train; returns the last validation accuracy (Hydra's job return value)."""
    from rl_vlm.controller import train
    from rl_vlm.tracking import read_metrics

    run_dir = train(cfg)  # type: ignore[arg-type]
    vals = [r["val/accuracy"] for r in read_metrics(run_dir) if r.get("val/accuracy") is not None]
    return vals[-1] if vals else None


def _sweep_job(raw: object, hc: object, sweep: dict[str, object], argv: list[str]) -> float | None:
    """One run of ``rl-vlm train -m``: own output dir, seed rule and wandb group
    (:mod:`rl_vlm.sweep`); a failing run is recorded and the sweep goes on."""
    import os
    import traceback

    from omegaconf import OmegaConf

    from rl_vlm.compose import from_omegaconf
    from rl_vlm.sweep import run_settings, swept_keys, varying, write_run_record
    from rl_vlm.validation import validate

    job = int(hc.job.num)  # type: ignore[attr-defined]
    overrides = varying(list(hc.overrides.task), swept_keys(argv))  # type: ignore[attr-defined]
    t = raw.trainer  # type: ignore[attr-defined]
    rs = run_settings(str(hc.sweep.dir), job, overrides, int(t.seed), bool(t.seed_per_run),  # type: ignore[attr-defined]
                      str(t.wandb_run_name))
    sweep.update(dir=str(hc.sweep.dir), metric=str(t.sweep_metric), mode=str(t.sweep_mode))  # type: ignore[attr-defined]
    OmegaConf.update(raw, "trainer.output_dir", rs.output_dir)  # type: ignore[arg-type]
    OmegaConf.update(raw, "trainer.seed", rs.seed)  # type: ignore[arg-type]
    OmegaConf.update(raw, "trainer.wandb_run_name", rs.wandb_run_name)  # type: ignore[arg-type]
    os.environ["WANDB_RUN_GROUP"] = rs.wandb_group  # wandb.init reads it when no group is passed
    print(f"sweep run {job}: {' '.join(overrides) or '(no overrides)'} seed={rs.seed} -> {rs.output_dir}",
          flush=True)
    write_run_record(rs.output_dir, job, overrides, rs.seed, "running")
    try:
        value = _run_training(validate(from_omegaconf(raw)))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - one bad combination must not end the sweep
        sweep["failed"] = int(sweep.get("failed", 0)) + 1  # type: ignore[call-overload]
        print(f"sweep run {job} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        write_run_record(rs.output_dir, job, overrides, rs.seed, "failed",
                         "".join(traceback.format_exception_only(type(e), e)).strip())
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()  # a run that died during start-up must not leak its pools
        return None
    write_run_record(rs.output_dir, job, overrides, rs.seed, "ok")
    return value


def _write_sweep_summary(sweep_dir: str, metric: str, mode: str, failed: int = 0) -> int:
    from rl_vlm.sweep import markdown_table, summarize, write_summary

    runs = summarize(sweep_dir, metric, mode)
    csv_path, md_path = write_summary(runs, sweep_dir, metric)
    print(markdown_table(["rank", "job", "overrides", f"final {metric}", "status"],
                         [[s.rank, s.job, " ".join(s.overrides), "" if s.final is None else f"{s.final:.4g}",
                           s.status] for s in runs]))
    print(f"sweep summary: {csv_path} {md_path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv and argv[0] in ("train", "eval"):
        return _train(argv[1:], mode=argv[0])
    parser = argparse.ArgumentParser(prog="rl-vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", help="train from the Hydra config tree (overrides follow)")
    sub.add_parser("eval", help="score model.path on data.val_files with pass@k (Hydra overrides follow)")
    b = sub.add_parser("build-tiny-model", help="build the tiny random-weight Qwen2.5-VL (+ warm start)")
    b.add_argument("--out", default=DEFAULT_MODEL_DIR)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--warm-start-steps", type=int, default=DEFAULT_WARM_START_STEPS)
    p = sub.add_parser("prepare-data", help="convert the easy-VQA package into JSONL rows")
    p.add_argument("--out", default=DEFAULT_DATA_DIR)
    s = sub.add_parser("setup-cpu-demo", help="prepare-data + build-tiny-model into artifacts/ if missing")
    s.add_argument("--seed", type=int, default=0)
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
        from rl_vlm.export import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out_dir, args.dtype))
        return 0
    if args.cmd == "build-tiny-model":
        _build_model(args.out, args.seed, args.warm_start_steps)
    elif args.cmd == "prepare-data":
        _prepare_data(args.out)
    elif args.cmd == "setup-cpu-demo":
        import shutil

        from rl_vlm.models.tiny import is_current

        _prepare_data(DEFAULT_DATA_DIR)
        if is_current(DEFAULT_MODEL_DIR, args.seed):
            print(f"{DEFAULT_MODEL_DIR} is up to date")
        else:  # missing, or built by other code or libraries: the tests expect today's recipe
            shutil.rmtree(DEFAULT_MODEL_DIR, ignore_errors=True)
            _build_model(DEFAULT_MODEL_DIR, args.seed, DEFAULT_WARM_START_STEPS)
    return 0


def _build_model(out: str, seed: int, steps: int) -> None:
    from rl_vlm.models.tiny import build_and_warm_start

    kwargs = {} if steps < 0 else {"warm_start_steps": steps}
    path = build_and_warm_start(out, seed=seed, **kwargs)
    print(f"tiny model written to {path}")


def _prepare_data(out: str) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train, test = convert_easy_vqa(out)
    print(f"easy-VQA rows written to {train} and {test}")


if __name__ == "__main__":
    raise SystemExit(main())
