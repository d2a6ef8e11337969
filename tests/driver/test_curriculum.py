"""Curriculum stages, dynamic sampling, the SFT loss (the samplers themselves: tests/data/test_sampling.py).

Fake datasets and a fake rollout stand in for files and engines: everything here is pure Python
and torch and runs in well under a second.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from rl_vlm.algorithms.core import sft_nll
from rl_vlm.batch import Prompt, RolloutBatch
from rl_vlm.compose import compose
from rl_vlm.config import (
    Config,
    ConfigError,
    CurriculumConfig,
    DataConfig,
    DataSourceConfig,
    DifficultyConfig,
    RewardConfig,
    RewardFunctionConfig,
    StageConfig,
)
from rl_vlm.data.sampling import MixtureSampler, PromptSampler
from rl_vlm.driver.curriculum import Curriculum
from rl_vlm.driver.rollout_phase import group_keep, sample_groups
from rl_vlm.driver.sft import sft_batch
from rl_vlm.rewards.manager import RewardResult
from rl_vlm.validation import validate
from tests.data.fake_rows import FakeDataset, _uids


# ---------------------------------------------------------------- stages
def _config(stages: tuple[StageConfig, ...], total: int, **data: Any) -> Config:
    return Config(data=DataConfig(train_files=("all.jsonl",), rollout_batch_size=4, **data),
                  curriculum=CurriculumConfig(name="test", stages=stages),
                  learner=replace(Config().learner, mini_batch_size=4, micro_batch_size=4),
                  trainer=replace(Config().trainer, total_steps=total))


def _factory(sizes: dict[str, int]) -> Any:
    def make(files: list[str], template: str) -> FakeDataset:
        name = files[0].removesuffix(".jsonl")
        return FakeDataset(name, sizes.get(name, 10))
    return make


YES_NO = RewardConfig(functions=(RewardFunctionConfig(name="exact_match", key="accuracy"),))
FORMAT_ACC = RewardConfig(functions=(RewardFunctionConfig(name="format", weight=0.1),
                                     RewardFunctionConfig(name="accuracy", weight=0.9)))


def test_stages_switch_at_their_boundaries_with_their_rewards() -> None:
    stages = (
        StageConfig(name="judge", steps=2, sources=(DataSourceConfig(files=("yn.jsonl",)),), reward=YES_NO),
        # 10 rows, 4 per step, 1 epoch -> ceil(10 / 4) = 3 steps.
        StageConfig(name="classify", epochs=1.0, sources=(DataSourceConfig(files=("cls.jsonl",)),)),
        StageConfig(name="self", type="sft", steps=1, reward=FORMAT_ACC),
    )
    cfg = _config(stages, total=7)
    validate(cfg, check_paths=False)
    cur = Curriculum(cfg, dataset_factory=_factory({"yn": 8, "cls": 10}))
    seen = []
    for step in range(1, 8):
        line = cur.enter(step)
        batch = cur.sampler.next_batch()
        scored = cur.rewards.score(["<think>x</think><answer>yes</answer>"] * 4, [p.row for p in batch])
        seen.append((step, line is not None, cur.current, cur.stage.cfg.type, batch[0].uid.split(":")[0],
                     sorted(scored.sub_scores), cur.metrics(batch)["curriculum/stage"]))
    assert seen == [
        (1, True, 0, "rl", "yn", ["accuracy"], 0.0),
        (2, False, 0, "rl", "yn", ["accuracy"], 0.0),
        (3, True, 1, "rl", "cls", ["accuracy", "format"], 1.0),
        (4, False, 1, "rl", "cls", ["accuracy", "format"], 1.0),
        (5, False, 1, "rl", "cls", ["accuracy", "format"], 1.0),
        (6, True, 2, "sft", "all", ["accuracy", "format"], 2.0),
        (7, False, 2, "sft", "all", ["accuracy", "format"], 2.0),  # the last stage runs on
    ]
    # Stage 0's reward is exact match only: the 0.9/0.1 weights are those of stage 1.
    assert cur.stages[0].rewards.names == ("accuracy",)


def test_curriculum_state_round_trip_continues_in_the_same_stage() -> None:
    stages = (StageConfig(steps=2, sources=(DataSourceConfig(files=("a.jsonl",)),)),
              StageConfig(steps=5, sources=(DataSourceConfig(files=("a.jsonl",), weight=1.0),
                                            DataSourceConfig(files=("b.jsonl",), weight=2.0))))
    cfg = replace(_config(stages, total=7), curriculum=CurriculumConfig(
        name="t", stages=stages, difficulty=DifficultyConfig(mode="uid")))
    factory = _factory({"a": 9, "b": 13})
    cur = Curriculum(cfg, dataset_factory=factory)
    for step in range(1, 5):
        cur.enter(step)
        batch = cur.sampler.next_batch()
        cur.difficulty.observe(batch, [1.0] * len(batch))
    state = cur.state_dict()
    expected = []
    for step in range(5, 8):
        cur.enter(step)
        expected.append(_uids(cur.sampler.next_batch()))
    resumed = Curriculum(cfg, dataset_factory=factory)
    resumed.load_state_dict(state)
    assert resumed.current == 1 and resumed.sampler is resumed.stages[1].sampler
    got = []
    for step in range(5, 8):
        assert resumed.enter(step) is None  # no switch: same stage as before the save
        got.append(_uids(resumed.sampler.next_batch()))
    assert got == expected
    assert resumed.difficulty.pass_rate == cur.difficulty.pass_rate != {}


def test_no_curriculum_is_the_plain_sampler() -> None:
    cfg = _config((), total=3)
    cur = Curriculum(cfg, dataset_factory=_factory({"all": 10}))
    assert type(cur.sampler) is PromptSampler and cur.sampler.seed == cfg.trainer.seed
    assert cur.enter(1) is None and cur.metrics([]) == {}


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("stage, key", [
    (StageConfig(name="x"), r"curriculum\.stages\[0\]\.steps"),
    (StageConfig(steps=2, epochs=1.0), r"curriculum\.stages\[0\]\.steps"),
    (StageConfig(steps=2, sources=(DataSourceConfig(files=("a.jsonl",), weight=0.0),)),
     r"curriculum\.stages\[0\]\.sources: weights"),
    (StageConfig(steps=2, sources=(DataSourceConfig(),)), r"curriculum\.stages\[0\]\.sources\[0\]"),
    (StageConfig(steps=2, sources=(DataSourceConfig(files=("missing.jsonl",)),)),
     r"curriculum\.stages\[0\]\.sources\[0\]\.files: 'missing.jsonl' does not exist"),
    (StageConfig(steps=2, reward_set="nope"), r"curriculum\.stages\[0\]\.reward_set"),
    (StageConfig(steps=2, reward=RewardConfig(functions=(RewardFunctionConfig(name="format"),))),
     r"curriculum\.stages\[0\]\.reward: .*no function with key 'accuracy'"),
    (StageConfig(steps=2, prompt_template="nope"), r"curriculum\.stages\[0\]\.prompt_template"),
])
def test_validation_names_the_key(stage: StageConfig, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rl_vlm.validation as validation

    monkeypatch.setattr(validation.os.path, "isdir", lambda p: True)
    monkeypatch.setattr(validation.os.path, "exists", lambda p: p != "missing.jsonl")
    cfg = replace(compose([]), curriculum=CurriculumConfig(stages=(stage,)))
    with pytest.raises(ConfigError, match=key):
        validate(cfg)


def test_data_sampling_keys_are_validated() -> None:
    cfg = compose(["data.max_sampling_tries=0"])
    with pytest.raises(ConfigError, match="data.max_sampling_tries"):
        validate(cfg, check_paths=False)
    with pytest.raises(ConfigError, match="data.filter_low"):
        validate(compose(["data.filter_low=0.9", "data.filter_high=0.1"]), check_paths=False)
    with pytest.raises(ConfigError, match="data.dynamic_sampling"):
        validate(compose(["algorithm=vogue_paper", "data.dynamic_sampling=true"]), check_paths=False)


def test_curriculum_yamls_compose() -> None:
    cfg = compose(["curriculum=curr_reft"])
    validate(cfg, check_paths=False)
    assert [s.type for s in cfg.curriculum.stages] == ["rl", "rl", "rl", "sft"]
    assert cfg.curriculum.stages[2].reward.by_task["detection"][1].kwargs == {"threshold": 0.5}
    cfg = compose(["curriculum=easy_vqa"])
    assert [s.steps for s in cfg.curriculum.stages] == [10, 10, 10]
    assert cfg.curriculum.stages[1].sources[1].files == ("artifacts/easy_vqa/train_shape.jsonl",)


# ---------------------------------------------------------------- dynamic sampling
class FakeRollout:
    """Prompt uid "x:i": every response of row i scores ``rewards(i, j)``."""

    def __init__(self, rewards: Any, G: int = 4) -> None:
        self.rewards, self.G, self.calls = rewards, G, 0

    def generate(self, prompts: list[Prompt], attempt: int) -> RolloutBatch:
        self.calls += 1
        n = len(prompts) * self.G
        return RolloutBatch(prompts=prompts, group_size=self.G, prompt_ids=[[1]] * n,
                            response_ids=[[2, 3]] * n, rollout_logprobs=[[-1.0, -1.0]] * n,
                            response_texts=[p.uid for p in prompts for _ in range(self.G)],
                            truncated=[False] * n, weight_version=0)

    def score(self, rollout: RolloutBatch) -> RewardResult:
        vals = torch.tensor([self.rewards(int(t.split(":")[1]), j % self.G)
                             for j, t in enumerate(rollout.response_texts)], dtype=torch.float32)
        return RewardResult(overall=vals, sub_scores={"accuracy": vals}, num_errors=0,
                            present={"accuracy": torch.ones(len(vals), dtype=torch.bool)})


def _dyn(**kw: Any) -> DataConfig:
    return DataConfig(rollout_batch_size=kw.pop("B", 4), dynamic_sampling=True, **kw)


def test_dynamic_sampling_never_keeps_a_zero_variance_group() -> None:
    # Rows divisible by 3 are learnable (mixed rewards); the others are all 0 or all 1.
    fake = FakeRollout(lambda i, j: float(j % 2) if i % 3 == 0 else float(i % 2))
    sampler = MixtureSampler([FakeDataset("x", 60)], [1.0], batch_size=4, seed=0)
    observed = []
    for _ in range(10):
        out = sample_groups(sampler.next_batch, fake.generate, fake.score, _dyn(max_sampling_tries=20),
                            observe=lambda p, s: observed.append(len(p)))
        acc = out.scored.sub_scores["accuracy"].view(-1, 4)
        assert len(out.prompts) == 4 and acc.shape == (4, 4)
        assert bool((acc.amax(1) > acc.amin(1)).all())
        assert out.metrics["data/sampling_capped"] == 0.0
        assert out.metrics["data/filtered_groups"] <= out.metrics["data/sampling_tries"] * 4 - 4
        # The rollout is consistent with its groups: texts are the prompts' uids.
        assert out.rollout.response_texts[::4] == [p.uid for p in out.prompts]
    assert sum(observed) == 4 * fake.calls  # every scored group reached the difficulty estimates


def test_dynamic_sampling_respects_max_tries_and_fills_with_the_best_groups() -> None:
    # Nothing is learnable except row 5, whose group has the largest spread (0..3 / 3).
    fake = FakeRollout(lambda i, j: j / 3 if i == 5 else 1.0)
    sampler = MixtureSampler([FakeDataset("x", 8)], [1.0], batch_size=4, seed=0)
    out = sample_groups(sampler.next_batch, fake.generate, fake.score, _dyn(max_sampling_tries=3))
    assert fake.calls == 3
    assert out.metrics["data/sampling_tries"] == 3 and out.metrics["data/sampling_capped"] == 1.0
    assert len(out.prompts) == 4
    kept = [p.uid for p in out.prompts]
    # Row 5 was drawn in the 12 draws of 8 rows at least once; each draw of it was kept.
    assert "x:5" in kept and out.metrics["data/filled_groups"] == 4 - kept.count("x:5")


def test_dynamic_sampling_band_on_a_sub_score() -> None:
    # Group mean of row i is (i % 4) / 4 + 0.125; keep 0.2 < mean < 0.8 -> rows with i % 4 in {1, 2}.
    fake = FakeRollout(lambda i, j: (i % 4) / 4 + (0.25 if j % 2 else 0.0))
    sampler = MixtureSampler([FakeDataset("x", 40)], [1.0], batch_size=4, seed=1)
    out = sample_groups(sampler.next_batch, fake.generate, fake.score,
                        _dyn(filter_key="accuracy", filter_low=0.2, filter_high=0.8, max_sampling_tries=50))
    assert all(int(p.uid.split(":")[1]) % 4 in (1, 2) for p in out.prompts)
    with pytest.raises(KeyError, match="data.filter_key"):
        sample_groups(sampler.next_batch, fake.generate, fake.score, _dyn(filter_key="nope"))


def test_without_dynamic_sampling_the_batch_is_as_drawn() -> None:
    fake = FakeRollout(lambda i, j: 1.0)
    sampler = MixtureSampler([FakeDataset("x", 8)], [1.0], batch_size=4, seed=0)
    out = sample_groups(sampler.next_batch, fake.generate, fake.score, DataConfig(rollout_batch_size=4))
    assert fake.calls == 1 and out.metrics == {} and len(out.prompts) == 4


def test_group_keep() -> None:
    v = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.2, 0.2])
    assert group_keep(v, 2, None, None).tolist() == [False, True, False, False]
    assert group_keep(torch.tensor([0.0, 1.0, 0.9, 1.0]), 2, 0.01, 0.9).tolist() == [True, False]


# ---------------------------------------------------------------- SFT
def test_sft_nll_value_and_gradient() -> None:
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, -0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    loss = sft_nll(logp, mask, num_tokens=5)
    assert loss.item() == pytest.approx((1 + 2 + 0.5 + 0.5 + 3) / 5)
    loss.backward()
    assert torch.allclose(logp.grad, -mask / 5)
    # Micro-batch shares with the global denominator sum to the whole batch's token mean.
    parts = sft_nll(logp[:1], mask[:1], 5) + sft_nll(logp[1:], mask[1:], 5)
    assert parts.item() == pytest.approx(loss.item())
    # Weight-0 padding sequences contribute nothing, even with -inf-free garbage values.
    assert sft_nll(torch.full((1, 3), -50.0), torch.zeros(1, 3), 5).item() == 0.0


def test_sft_batch_pads_to_whole_updates_with_weight_zero() -> None:
    fake = FakeRollout(lambda i, j: 1.0, G=2)
    prompts = [FakeDataset("x", 3).get(i) for i in range(3)]
    rollout = fake.generate(prompts, 0)
    batch, weights = sft_batch(rollout, [0, 3, 5], seqs_per_update=4)
    assert len(batch) == 4 and weights == [1.0, 1.0, 1.0, 0.0]
    assert batch.images[1] is prompts[1].images and batch.images[2] is prompts[2].images
    batch, weights = sft_batch(rollout, [0, 1, 2, 3, 4], seqs_per_update=4)
    assert len(batch) == 8 and sum(weights) == 5
