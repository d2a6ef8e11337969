"""``rl-vlm`` command line.

    rl-vlm setup-cpu-demo                  # tiny model + easy-VQA files under artifacts/ (idempotent)
    rl-vlm build-tiny-model [--out DIR] [--seed N] [--warm-start-steps N]
    rl-vlm prepare-data [--out DIR]
    rl-vlm train [hydra overrides...]      # e.g. rl-vlm train experiment=grpo_tiny_cpu learner.lr=1e-4
    rl-vlm train -m learner.lr=1e-4,3e-4   # Hydra multirun
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
    from rl_vlm.config import ConfigError, validate

    register_base()

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
    def run(raw: DictConfig) -> float | None:
        from rl_vlm.controller import evaluate, train

        try:
            cfg = validate(from_omegaconf(raw))
        except ConfigError as e:
            # One clear line instead of a traceback: the message names the key.
            print(f"config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if mode == "eval":
            import json

            metrics = evaluate(cfg)
            print(json.dumps(metrics, indent=2))
            return metrics.get("val/accuracy")
        run_dir = train(cfg)
        from rl_vlm.tracking import read_metrics

        vals = [r["val/accuracy"] for r in read_metrics(run_dir) if r.get("val/accuracy") is not None]
        return vals[-1] if vals else None

    sys.argv = [sys.argv[0]] + argv
    run()
    return 0


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
    args = parser.parse_args(argv)
    if args.cmd == "build-tiny-model":
        _build_model(args.out, args.seed, args.warm_start_steps)
    elif args.cmd == "prepare-data":
        _prepare_data(args.out)
    elif args.cmd == "setup-cpu-demo":
        import os

        _prepare_data(DEFAULT_DATA_DIR)
        if not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "build_info.json")):
            _build_model(DEFAULT_MODEL_DIR, args.seed, DEFAULT_WARM_START_STEPS)
        else:
            print(f"{DEFAULT_MODEL_DIR} exists; delete it to rebuild")
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
