"""The driver loop with in-process fake pools (no Ray, vLLM or DeepSpeed): the loop's own logic —
phases, metrics, weight versions, checkpoints, resume, prompt accounting, stop on a signal — proven
in seconds. The real stack runs the same loop in tests/e2e.

The fakes implement the pools' protocols (:mod:`rl_vlm.distributed.interfaces`): the rollout pool
answers from a seeded RNG (half the answers right), the learner pool keeps one "weight" per
optimizer step so that weight versions and restored state can be checked.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from pathlib import Path

import pytest
import torch

from rl_vlm.batch import LearnerBatch, Prompt, RolloutBatch, StepShape
from rl_vlm.compose import compose
from rl_vlm.config import Config
from rl_vlm.distributed.interfaces import LogprobModel, Pools, PublishedWeights
from rl_vlm.distributed.sharding import StepSharding, shard_step
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

SHIPPED = Path(__file__).resolve().parents[2] / "rl_vlm" / "models" / "assets" / "tiny-qwen2.5-vl"


class FakeRollout:
    """Seeded answers: each sample is right with probability 1/2 (so groups have reward variance)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.weight_version = 0
        self.restarts = 0
        self.loaded: list[tuple[int, PublishedWeights]] = []
        self.sampled: list[str] = []
        """uid of every training prompt sampled, in order (validation prompts excluded)."""

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float,
                 seed: int) -> RolloutBatch:
        texts, ids = [], []
        for p in prompts:
            rng = random.Random(seed * 1_000_003 + zlib.crc32(p.uid.encode()))
            for _ in range(n):
                answer = p.row["answer"] if rng.random() < 0.5 else "nothing"
                texts.append(f"<think>a shape</think><answer>{answer}</answer>")
                ids.append(self.tokenizer.encode(texts[-1]))
        if seed != 0:  # validation samples with seed 0 (rl_vlm.seeds.VALIDATION)
            self.sampled += [p.uid for p in prompts]
        prompt_ids = [self.tokenizer.encode(p.prompt_text) for p in prompts for _ in range(n)]
        return RolloutBatch(prompts=prompts, group_size=n, prompt_ids=prompt_ids, response_ids=ids,
                            rollout_logprobs=[[-0.5] * len(r) for r in ids], response_texts=texts,
                            truncated=[False] * len(ids), weight_version=self.weight_version)

    def load_weights(self, refs: PublishedWeights, version: int) -> list[int]:
        self.weight_version = version
        self.loaded.append((version, refs))
        return [version]


class FakeLearners:
    """One scalar "weight" that each optimizer step increments; checkpoints hold it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.weight = 0
        self.num_params = 1
        self.sharding: StepSharding = shard_step([], cfg.learner.num_ranks, 1, 1)
        self.batch: LearnerBatch | None = None
        self.shapes: list[StepShape] = []

    @property
    def micro_batches(self) -> list[list[int]]:
        return self.sharding.micro_batches

    @property
    def device_mini_batches(self) -> list[list[int]]:
        return self.sharding.device_mini_batches

    def set_batch(self, batch: LearnerBatch, shape: StepShape) -> None:
        self.batch, self.shapes = batch, [*self.shapes, shape]
        self.sharding = shard_step([len(r) for r in batch.response_ids], self.cfg.learner.num_ranks,
                                   shape.mini_batch_size * shape.group_size, self.cfg.learner.micro_batch_size)

    def compute_logprobs(self, which: LogprobModel = "policy") -> list[torch.Tensor]:
        assert self.batch is not None
        return [torch.full((len(r),), -0.5) for r in self.batch.response_ids]

    def compute_views(self) -> dict[str, list[torch.Tensor]]:
        return {}

    def update(self, advantages: list[torch.Tensor], old: list[torch.Tensor],
               ref: list[torch.Tensor] | None) -> dict[str, float]:
        steps = len(self.sharding.num_tokens)  # one optimizer step per mini-batch
        self.weight += steps
        adv = torch.cat(advantages)
        return {"pg_loss": -adv.mean().item(), "grad_norm": 1.0, "lr": self.cfg.learner.lr,
                "entropy": 0.5, "clip_frac": 0.0, "kl": 0.0, "optimizer_steps": float(steps)}

    def sft_update(self, weights: list[float], response_lengths: list[int]) -> dict[str, float]:
        self.weight += 1
        return {"sft/loss": 1.0}

    def publish_weights(self) -> PublishedWeights:
        return [[("weight", self.weight)]]

    def save_checkpoint(self, path: str) -> None:
        Path(path, "learner.json").write_text(json.dumps({"weight": self.weight}))

    def load_checkpoint(self, path: str) -> None:
        self.weight = json.loads(Path(path, "learner.json").read_text())["weight"]

    def save_hf(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        Path(out_dir, "weight.json").write_text(json.dumps({"weight": self.weight}))


class FakeProvider:
    """Hands out fake pools; remembers every pair so tests can look inside."""

    def __init__(self) -> None:
        self.runs: list[Pools] = []
        self.released: list[bool] = []

    def acquire(self, cfg: Config, with_learners: bool) -> Pools:
        from transformers import AutoTokenizer

        pools = Pools(FakeRollout(AutoTokenizer.from_pretrained(cfg.model.path)),
                      FakeLearners(cfg) if with_learners else None)
        self.runs.append(pools)
        return pools

    def release(self, failed: bool) -> None:
        self.released.append(failed)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path_factory.mktemp("easy_vqa"), max_train=40, max_test=8)
    return train_file, test_file


def _cfg(data: tuple[Path, Path], run_dir: Path, *extra: str) -> Config:
    return compose([
        f"model.path={SHIPPED}", f"data.train_files=[{data[0]}]", f"data.val_files=[{data[1]}]",
        "data.rollout_batch_size=4", "data.val_size=4", "rollout.n=4", "learner.num_ranks=2",
        "learner.mini_batch_size=2", "learner.micro_batch_size=2", "trainer.val_every=3",
        "trainer.progress_bar=false", f"trainer.output_dir={run_dir}", *extra])


def test_loop_runs_every_phase_and_logs_each_step(data: tuple[Path, Path], tmp_path: Path) -> None:
    provider = FakeProvider()
    run_dir = tmp_path / "run"
    train(_cfg(data, run_dir, "trainer.total_steps=3", "trainer.save_final_model=true"), pools=provider)
    by_step = {r["step"]: r for r in read_metrics(str(run_dir))}
    assert sorted(by_step) == [0, 1, 2, 3]  # validation before training, then each step
    rollout, learners = provider.runs[0].rollout, provider.runs[0].learners
    assert isinstance(learners, FakeLearners) and isinstance(rollout, FakeRollout)
    for s in (1, 2, 3):
        r = by_step[s]
        # 4 prompts x 4 samples, mini-batches of 2 prompts: 2 optimizer steps per step.
        assert r["actor/optimizer_steps"] == 2.0
        assert r["sync/version_min"] == s  # the engines hold the weights published after step s
        for phase in ("rollout", "reward", "old_logprob", "advantage", "update", "sync"):
            assert r[f"time/{phase}_s"] >= 0
        # The engine's log-probs equal the learner's here, so the reported gap is exactly 0.
        assert r["rollout/logprob_diff"] == 0.0 and r["reward/disabled"] == 0.0
        assert 0.0 <= r["reward/accuracy"] <= 1.0
    assert "val/accuracy" in by_step[0] and "val/accuracy" in by_step[3]
    # What the loop handed the learners: the step's shape, from the config.
    assert [(s.step, s.group_size, s.mini_batch_size, s.total_steps) for s in learners.shapes] == [
        (1, 4, 2, 3), (2, 4, 2, 3), (3, 4, 2, 3)]
    assert [v for v, _ in rollout.loaded] == [1, 2, 3]
    assert rollout.loaded[-1][1] == [[("weight", 6)]]  # 3 steps x 2 optimizer steps
    assert json.loads((run_dir / "final" / "weight.json").read_text()) == {"weight": 6}
    assert provider.released == [False]


def test_resume_continues_the_same_run_and_consumes_each_prompt_once(data: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    # Reference: 4 steps in one go.
    ref = FakeProvider()
    train(_cfg(data, tmp_path / "ref", "trainer.total_steps=4", "trainer.val_every=0"), pools=ref)
    # The same run stopped after 2 steps (a checkpoint per step), then relaunched to 4.
    run_dir = tmp_path / "run"
    first, second = FakeProvider(), FakeProvider()
    train(_cfg(data, run_dir, "trainer.total_steps=2", "trainer.val_every=0", "trainer.save_every=1"),
          pools=first)
    train(_cfg(data, run_dir, "trainer.total_steps=4", "trainer.val_every=0", "trainer.save_every=1"),
          pools=second)
    ref_rollout, a, b = ref.runs[0].rollout, first.runs[0].rollout, second.runs[0].rollout
    assert isinstance(ref_rollout, FakeRollout) and isinstance(a, FakeRollout) and isinstance(b, FakeRollout)
    # Every prompt of the 4 steps was sampled exactly once, in the uninterrupted run's order.
    assert a.sampled + b.sampled == ref_rollout.sampled and len(ref_rollout.sampled) == 16
    # The restored learner state and weight version carried over: the resumed engines first got
    # the checkpoint's weights as version 2, then steps 3 and 4.
    assert [v for v, _ in b.loaded] == [2, 3, 4] and b.loaded[0][1] == [[("weight", 4)]]
    ref_metrics = {r["step"]: r for r in read_metrics(str(tmp_path / "ref"))}
    got = {r["step"]: r for r in read_metrics(str(run_dir))}
    assert sorted(got) == [1, 2, 3, 4]
    for s in (1, 2, 3, 4):
        same = {k: v for k, v in got[s].items() if not k.startswith(("time/", "perf/"))}
        assert same == {k: v for k, v in ref_metrics[s].items() if not k.startswith(("time/", "perf/"))}, s


def test_bad_rows_are_counted_once_and_listed(data: tuple[Path, Path], tmp_path: Path) -> None:
    rows = [json.loads(line) for line in data[0].read_text().splitlines()][:12]
    for i in (1, 5):  # two rows whose image is missing: found when first drawn
        rows[i]["images"] = ["no/such/image.png"]
    train_file = data[0].parent / "with_bad_rows.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    # 12 rows, 4 per step: 6 steps are 2 epochs, so each bad row is drawn twice.
    train(_cfg((train_file, data[1]), run_dir, "trainer.total_steps=6", "trainer.val_every=0"),
          pools=FakeProvider())
    by_step = {r["step"]: r for r in read_metrics(str(run_dir))}
    assert by_step[6]["data/skipped"] == 2.0 and by_step[6]["data/epoch"] >= 1
    listed = [json.loads(line) for line in (run_dir / "skipped_rows.jsonl").read_text().splitlines()]
    assert sorted(r["row"] for r in listed) == [2, 6]  # 1-based line numbers of the file
    assert all(r["file"] == str(train_file) and "image" in r["reason"] for r in listed)


def _prompt_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "prompts.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("k", [1, 2])
def test_async_rollout_samples_ahead_on_a_fixed_schedule(data: tuple[Path, Path], tmp_path: Path, k: int) -> None:
    sync, ahead = FakeProvider(), FakeProvider()
    train(_cfg(data, tmp_path / "sync", "trainer.total_steps=5", "trainer.val_every=0"), pools=sync)
    train(_cfg(data, tmp_path / "ahead", "trainer.total_steps=5", "trainer.val_every=0",
               f"trainer.max_staleness={k}"), pools=ahead)
    a, s = ahead.runs[0].rollout, sync.runs[0].rollout
    assert isinstance(a, FakeRollout) and isinstance(s, FakeRollout)
    # The same prompts in the same order, each sampled once, none for steps past the last.
    assert a.sampled == s.sampled and len(a.sampled) == 5 * 4
    log = _prompt_log(tmp_path / "ahead")
    assert [r["uids"] for r in log] == [r["uids"] for r in _prompt_log(tmp_path / "sync")]
    # Step s trains on the batch sampled with version max(0, s - 1 - k): k versions old.
    assert [r["weight_version"] for r in log] == [max(0, s - 1 - k) for s in range(1, 6)]
    by_step = {r["step"]: r for r in read_metrics(str(tmp_path / "ahead"))}
    assert [by_step[s]["rollout/staleness_max"] for s in range(1, 6)] == [
        float(s - 1 - max(0, s - 1 - k)) for s in range(1, 6)]
    assert [v for v, _ in a.loaded] == [1, 2, 3, 4, 5]  # one sync per step, after the update
    for step in range(1, 6):
        assert by_step[step]["time/rollout_wait_s"] >= 0 and by_step[step]["time/sync_wait_s"] >= 0


class BlockingLearners(FakeLearners):
    """An update that returns only once the engines are sampling a later step's batch: it can
    finish only if rollout runs while the learners update."""

    def __init__(self, cfg: Config, rollout: FakeRollout) -> None:
        super().__init__(cfg)
        self.rollout = rollout
        self.overlapped: list[bool] = []

    def update(self, advantages: list[torch.Tensor], old: list[torch.Tensor],
               ref: list[torch.Tensor] | None) -> dict[str, float]:
        import time

        needed = len(self.overlapped) + 2  # step s's update needs batch s + 1 under way
        deadline = time.monotonic() + 10
        while len(self.rollout.sampled) < 4 * needed and time.monotonic() < deadline:
            time.sleep(0.01)
        self.overlapped.append(len(self.rollout.sampled) >= 4 * needed)
        return super().update(advantages, old, ref)


def test_async_rollout_runs_while_the_learners_update(data: tuple[Path, Path], tmp_path: Path) -> None:
    class Provider(FakeProvider):
        def acquire(self, cfg: Config, with_learners: bool) -> Pools:
            pools = super().acquire(cfg, with_learners)
            assert isinstance(pools.rollout, FakeRollout)
            pools.learners = BlockingLearners(cfg, pools.rollout)
            return pools

    provider = Provider()
    train(_cfg(data, tmp_path / "run", "trainer.total_steps=3", "trainer.val_every=0",
               "trainer.max_staleness=1"), pools=provider)
    learners = provider.runs[0].learners
    assert isinstance(learners, BlockingLearners)
    # Steps 1 and 2 saw the next batch sampled during their update; step 3 has no next batch.
    assert learners.overlapped == [True, True, False]


class DyingLearners(FakeLearners):
    """A learner rank that dies in step 3's update (after the checkpoint of step 2)."""

    def update(self, advantages: list[torch.Tensor], old: list[torch.Tensor],
               ref: list[torch.Tensor] | None) -> dict[str, float]:
        from rl_vlm.distributed.pools import WorkerFailure

        if self.shapes[-1].step == 3:
            raise WorkerFailure("learner rank 1 died")
        return super().update(advantages, old, ref)


def test_async_resume_trains_every_prompt_exactly_once(data: tuple[Path, Path], tmp_path: Path) -> None:
    class Provider(FakeProvider):
        def acquire(self, cfg: Config, with_learners: bool) -> Pools:
            pools = super().acquire(cfg, with_learners)
            if len(self.runs) == 1:
                pools.learners = DyingLearners(cfg)
            return pools

    common = ("trainer.total_steps=4", "trainer.val_every=0", "trainer.save_every=1", "trainer.max_staleness=1")
    ref, run = FakeProvider(), Provider()
    train(_cfg(data, tmp_path / "ref", *common), pools=ref)
    train(_cfg(data, tmp_path / "run", *common), pools=run)  # dies in step 3, restarts from step 2
    assert len(run.runs) == 2 and True in run.released  # one restart
    restarted = run.runs[1].rollout
    assert isinstance(restarted, FakeRollout)
    assert [v for v, _ in restarted.loaded] == [2, 3, 4]
    # Step 3's batch (sampled with version 1, before the failure) came back from the checkpoint:
    # the restarted system sampled only step 4's, with the same version 2 as the reference.
    assert len(restarted.sampled) == 4
    got, want = _prompt_log(tmp_path / "run"), _prompt_log(tmp_path / "ref")
    assert got == want and [r["step"] for r in got] == [1, 2, 3, 4]
    assert len({u for rec in got for u in rec["uids"]}) == 16  # each prompt trained once
    ref_metrics = {m["step"]: m for m in read_metrics(str(tmp_path / "ref"))}
    for m in read_metrics(str(tmp_path / "run")):
        same = {k: v for k, v in m.items() if not k.startswith(("time/", "perf/"))}
        assert same == {k: v for k, v in ref_metrics[m["step"]].items() if not k.startswith(("time/", "perf/"))}
