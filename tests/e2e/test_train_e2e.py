"""A real GRPO run through Ray + vLLM + DeepSpeed ZeRO-3 on the tiny model (no mocks).

1 rollout engine, 2 learner ranks, a few steps. Asserts what a user relies on: the policy's
weights changed, every engine received every weight version, the engine's log-probs after a
sync match the learner's, and the metrics were written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_vlm.compose import compose
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

pytestmark = pytest.mark.e2e

# fp32 on both sides; differences come from kernel order (vLLM's CPU attention vs SDPA).
SYNC_TOL = 1e-3


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    return convert_easy_vqa(tmp_path_factory.mktemp("easy_vqa"), max_train=64, max_test=8)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_repointed_pools_give_the_fresh_run(warm_model_dir: Path, tiny_model_dir: Path, small_data: tuple[Path, Path],
                                            tmp_path: Path, shared_pools: SharedPools) -> None:
    """What makes sharing a running system sound: a run on actors re-pointed from another run
    (other model directory with the same config and tokenizer, algorithm, lr and seed) is the run
    on fresh actors, metric for metric and weight for weight."""
    train_file, test_file = small_data

    def cfg(run_dir: Path, *extra: str, model: Path = warm_model_dir):
        return compose([
            f"model.path={model}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
            "data.rollout_batch_size=2", "data.val_size=4", "rollout.n=4", "rollout.max_new_tokens=24",
            "learner.num_ranks=2", "learner.mini_batch_size=1", "learner.micro_batch_size=2", "learner.lr=1e-3",
            "trainer.total_steps=2", "trainer.val_every=2", "trainer.progress_bar=false",
            "trainer.save_final_model=true", f"trainer.output_dir={run_dir}", *extra])

    shared_pools.close()  # the first run gets fresh actors
    train(cfg(tmp_path / "fresh"), pools=shared_pools)
    train(cfg(tmp_path / "other", "algorithm=papo", "learner.lr=3e-3", "trainer.seed=7", model=tiny_model_dir),
          pools=shared_pools)
    reused_before = shared_pools.reused
    train(cfg(tmp_path / "repointed"), pools=shared_pools)
    assert shared_pools.reused == reused_before + 1 >= 2  # "other" and "repointed" were re-pointed

    def same(run: str) -> dict[int, dict[str, float]]:
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}
                for r in read_metrics(str(tmp_path / run))}

    fresh, repointed = same("fresh"), same("repointed")
    assert sorted(fresh) == [0, 1, 2] and repointed == fresh
    a, b = _weights(tmp_path / "fresh" / "final"), _weights(tmp_path / "repointed" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(tmp_path / "other" / "final")[k]) for k in a)


def test_grpo_runs_end_to_end(warm_model_dir: Path, small_data: tuple[Path, Path], tmp_path: Path,
                              shared_pools: SharedPools) -> None:
    train_file, test_file = small_data
    run_dir = tmp_path / "run"
    steps = 3
    cfg = compose([
        f"model.path={warm_model_dir}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
        "data.rollout_batch_size=4", "data.val_size=8", "rollout.n=4", "rollout.max_new_tokens=32",
        "learner.num_ranks=2", "learner.mini_batch_size=2", "learner.lr=1e-3",
        # Micro-batches sized by tokens (the longest sequence, 256 + 32): their count varies by
        # mini-batch, and the ZeRO-3 ranks must still agree on it. Packed (no padding; on CPU
        # `auto` pads): the engine/learner agreement below then checks the packed forward too.
        "learner.max_tokens_per_micro_batch=288", "learner.packing=on",
        f"trainer.total_steps={steps}", "trainer.val_every=3", f"trainer.output_dir={run_dir}",
        "trainer.progress_bar=false", "trainer.save_final_model=true", "trainer.wandb_mode=offline",
        # Exercise the frozen-reference path (a second ZeRO-3 engine) and the k3 KL term.
        "algorithm.kl_coef=0.01",
    ])
    train(cfg, pools=shared_pools)

    records = read_metrics(str(run_dir))
    by_step = {r["step"]: r for r in records}
    assert sorted(by_step) == [0, 1, 2, 3]
    assert "val/accuracy" in by_step[0] and "val/accuracy" in by_step[3]
    for s in range(1, steps + 1):
        r = by_step[s]
        # Every engine reports the version pushed after this step's update.
        assert r["sync/version_min"] == s
        for key in ("reward/mean", "reward/format", "reward/accuracy", "actor/pg_loss", "actor/grad_norm",
                    "actor/lr", "actor/entropy", "actor/clip_frac", "response/length_mean", "time/rollout_s",
                    "time/update_s", "time/sync_s", "perf/tokens_per_s"):
            assert key in r, key
        assert r["actor/grad_norm"] > 0
        # 2 mini-batches of 4 sequences per rank: 1 to 4 micro-batches each.
        assert 2 <= r["actor/micro_batches"] <= 8, r["actor/micro_batches"]
        # k3 >= 0 exactly in real arithmetic; at step 1 (policy == reference) fp32 rounding of
        # exp(δ) − δ − 1 around δ ≈ 0 can leave ~1e-9 of either sign.
        assert r["actor/kl"] >= -1e-6
        # 2 mini-batches per step -> 2 optimizer steps; lr is constant (no warm-up).
        assert r["actor/lr"] == pytest.approx(1e-3)
    # Rollouts of step s >= 2 were sampled by engines holding the weights synced after step s-1,
    # and the learner computed its old log-probs with those same weights: they must agree.
    for s in range(2, steps + 1):
        assert by_step[s]["rollout/logprob_max_diff"] < SYNC_TOL, by_step[s]["rollout/logprob_max_diff"]

    # Step 1's first mini-batch is computed before any update: policy == reference, KL == 0.
    assert by_step[3]["actor/kl"] > 0
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"

    before, after = _weights(warm_model_dir), _weights(run_dir / "final")
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(changed) > 0.5 * len(before), f"only {len(changed)}/{len(before)} tensors changed"
    import yaml

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["learner"]["lr"] == 1e-3 and resolved["model"]["path"] == str(warm_model_dir)
