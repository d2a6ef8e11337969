"""GRPO-CARE (algorithms.md §4): answer confidence, the consistency bonus per group and per
device, the Care hooks, config validation, and a numerical comparison with a test-only
transcription of the authors' CARE block (grpo_trainer_ref_ema.py L583–642)."""

from __future__ import annotations

import math

import pytest
import torch

from rl_vlm.algorithms import Algorithm, EmaSpec, StepContext, build_algorithm
from rl_vlm.algorithms.care import (
    Care,
    answer_confidence,
    consistency_bonus,
    group_units,
)
from rl_vlm.algorithms.core import group_advantages
from rl_vlm.config import AlgorithmConfig, CareConfig, ConfigError


def _cfg(**care: object) -> AlgorithmConfig:
    return AlgorithmConfig(name="care", adv_eps=1e-4, care=CareConfig(**care))  # type: ignore[arg-type]


def _ctx(mask: torch.Tensor, ema_logprobs: torch.Tensor | None = None, answer_mask: torch.Tensor | None = None,
         device_mini_batches: list[list[int]] | None = None) -> StepContext:
    """A driver-side step context; ``device_mini_batches`` defaults to one unit of all N sequences."""
    n = mask.shape[0]
    return StepContext(response_mask=mask, old_logprobs=torch.zeros_like(mask), step=1, total_steps=1,
                       micro_batches=[list(range(n))],
                       device_mini_batches=[list(range(n))] if device_mini_batches is None else device_mini_batches,
                       branch=torch.zeros(n, dtype=torch.long), ema_logprobs=ema_logprobs, answer_mask=answer_mask)


def _care_fields(conf: list[float]) -> dict[str, torch.Tensor]:
    """ema_logprobs and answer_mask giving exactly the confidences ``conf`` (one answer token)."""
    n = len(conf)
    logp = torch.full((n, 3), -7.0)
    logp[:, 1] = torch.tensor(conf, dtype=torch.float64).log().float()
    answer = torch.zeros(n, 3)
    answer[:, 1] = 1.0
    return {"ema_logprobs": logp, "answer_mask": answer}


# ----------------------------------------------------------------------------- confidence
def test_answer_confidence_is_the_geometric_mean_probability_of_the_span() -> None:
    logp = torch.tensor([[-5.0, -0.1, -0.3, -9.0], [-0.01, -0.02, -0.03, -0.04], [float("nan"), -1.0, 0.0, 0.0]],
                        dtype=torch.float64)
    span = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    conf, raw = answer_confidence(logp, span, upper_bound=0.95)
    # Row 0: exp(-0.4 / (2 + 1e-6)); row 1: exp(-0.1 / 4) = 0.9753 -> clamped 0.95; row 2 empty -> 1 -> 0.95
    # (and the NaN off the span does not leak).
    assert raw[0].item() == pytest.approx(math.exp(-0.4 / (2 + 1e-6)), rel=1e-12)
    assert raw[1].item() == pytest.approx(math.exp(-0.1 / (4 + 1e-6)), rel=1e-12)
    assert raw[2].item() == 1.0
    torch.testing.assert_close(conf, torch.tensor([math.exp(-0.4 / (2 + 1e-6)), 0.95, 0.95], dtype=torch.float64))
    unclamped, _ = answer_confidence(logp, span, upper_bound=None)
    assert unclamped[2].item() == 1.0


# ----------------------------------------------------------------------------- bonus
def test_bonus_by_hand() -> None:
    acc = torch.tensor([1.0, 1.0, 0.0, 1.0])
    conf = torch.tensor([0.9, 0.5, 0.95, 0.8])
    out = consistency_bonus(acc, conf, [[0, 1, 2, 3]], bonus_coef=0.5, margin=0.0)
    # mean acc 0.75 -> H = {0, 1, 3}; c̄ = (0.9 + 0.5 + 0.8) / 3 = 0.7333 -> C = {0, 2, 3}; H ∩ C = {0, 3}.
    assert out.high_accuracy.tolist() == [True, True, False, True]
    assert out.consistent.tolist() == [True, False, True, True]
    torch.testing.assert_close(out.bonus, torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=torch.float64))


def test_margin_widens_the_consistent_set() -> None:
    acc = torch.tensor([1.0, 1.0, 0.0])
    conf = torch.tensor([0.9, 0.88, 0.1])  # c̄ over H = 0.89
    assert consistency_bonus(acc, conf, [[0, 1, 2]], 1.0, margin=0.0).bonus.tolist() == [1.0, 0.0, 0.0]
    assert consistency_bonus(acc, conf, [[0, 1, 2]], 1.0, margin=0.01).bonus.tolist() == [1.0, 1.0, 0.0]


def test_bonus_is_proportional_to_accuracy_and_needs_the_threshold() -> None:
    acc = torch.tensor([0.6, 0.4, 0.05, 0.0])
    conf = torch.tensor([0.5, 0.5, 0.9, 0.9])
    # mean acc 0.2625 -> H = {0, 1}; equal c -> both consistent; bonus λ·acc.
    out = consistency_bonus(acc, conf, [[0, 1, 2, 3]], bonus_coef=0.5)
    torch.testing.assert_close(out.bonus, torch.tensor([0.3, 0.2, 0.0, 0.0], dtype=torch.float64))
    # All accuracies ≤ 0.1: H is empty although they are ≥ the mean.
    low = consistency_bonus(torch.full((4,), 0.1), conf, [[0, 1, 2, 3]], 0.5)
    assert not low.high_accuracy.any() and (low.bonus == 0).all()


def test_empty_high_accuracy_set_gives_no_bonus() -> None:
    out = consistency_bonus(torch.zeros(4), torch.tensor([0.9, 0.1, 0.5, 0.95]), [[0, 1, 2, 3]], 0.5)
    assert not out.high_accuracy.any() and not out.consistent.any()
    assert (out.bonus == 0).all() and not torch.isnan(out.bonus).any()


def test_ties_with_the_mean_count_as_consistent() -> None:
    # float64 means: six accuracies of 0.9 are all >= their mean (float32 would empty H).
    acc = torch.full((6,), 0.9)
    out = consistency_bonus(acc, torch.full((6,), 0.95), [list(range(6))], 0.5)
    assert out.high_accuracy.all() and out.consistent.all()


def test_units_must_partition_the_batch() -> None:
    acc, conf = torch.ones(4), torch.ones(4)
    with pytest.raises(ValueError, match="cover"):
        consistency_bonus(acc, conf, [[0, 1, 2]], 0.5)
    with pytest.raises(ValueError, match="overlap"):
        consistency_bonus(acc, conf, [[0, 1, 2], [2, 3]], 0.5)
    assert group_units(6, 3) == [[0, 1, 2], [3, 4, 5]]


# ----------------------------------------------------------------------------- the hook
def test_score_rollouts_adds_the_bonus_per_group_and_reports_metrics() -> None:
    algo = build_algorithm(_cfg(bonus_coef=0.5))
    assert isinstance(algo, Care)
    acc = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    rewards = acc + 0.1  # format reward 0.1 everywhere
    conf = [0.9, 0.5, 0.95, 0.8, 0.9, 0.9, 0.9, 0.9]
    out = algo.score_rollouts(rewards, {"accuracy": acc, "format": torch.ones(8)}, 4,
                              _ctx(torch.ones(8, 3), **_care_fields(conf)))
    # Group 0 as in test_bonus_by_hand; group 1 has H empty.
    torch.testing.assert_close(out.rewards, rewards + torch.tensor([0.5, 0, 0, 0.5, 0, 0, 0, 0]))
    assert out.metrics["care/bonus_rate"] == pytest.approx(2 / 8)
    assert out.metrics["care/consistency_rate"] == pytest.approx(2 / 3)
    assert out.metrics["care/high_accuracy_rate"] == pytest.approx(3 / 8)
    assert out.metrics["care/confidence_mean"] == pytest.approx(sum(conf) / 8, abs=1e-6)
    assert out.metrics["care/bonus_mean"] == pytest.approx(1.0 / 8)


def test_confidence_is_clamped_before_the_mean() -> None:
    algo = Care(_cfg(bonus_coef=1.0, confidence_upper_bound=0.95))
    acc = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # Unclamped c̄ = (0.999 + 0.93 + 0.94) / 3 = 0.9563 -> only seq 0 consistent; clamped
    # c = (0.95, 0.93, 0.94), c̄ = 0.94 -> seqs 0 and 2.
    fields = _care_fields([0.999, 0.93, 0.94, 0.2])
    out = algo.score_rollouts(acc.clone(), {"accuracy": acc}, 4, _ctx(torch.ones(4, 3), **fields))
    torch.testing.assert_close(out.rewards, torch.tensor([2.0, 1.0, 2.0, 0.0]))
    unclamped = Care(_cfg(bonus_coef=1.0, confidence_upper_bound=None))
    out = unclamped.score_rollouts(acc.clone(), {"accuracy": acc}, 4, _ctx(torch.ones(4, 3), **fields))
    torch.testing.assert_close(out.rewards, torch.tensor([2.0, 1.0, 1.0, 0.0]))


def test_empty_answer_span_gives_095_and_empty_responses_are_harmless() -> None:
    algo = Care(_cfg(bonus_coef=0.5))
    acc = torch.tensor([1.0, 0.0, 1.0, 0.0])
    logp = torch.tensor([[-0.2, -0.2], [0.0, 0.0], [-0.01, 0.0], [0.0, 0.0]])
    answer = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # seqs 1 and 3 are empty
    out = algo.score_rollouts(acc.clone(), {"accuracy": acc}, 4, _ctx(mask, logp, answer))
    # c = (exp(-0.2) = 0.8187, 0.95, 0.95, 0.95); H = {0, 2}; c̄ = 0.8844 -> seq 2 (empty span) bonused.
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, 0.0, 1.5, 0.0]))
    assert torch.isfinite(algo.compute_advantages(out.rewards, 4, _ctx(mask))).all()


def test_all_correct_some_bonused_gives_nonzero_advantages() -> None:
    """The mechanism of the method (§4.4): without the bonus the group has zero std."""
    algo = Care(_cfg(bonus_coef=0.5))
    acc = torch.ones(4)
    mask = torch.ones(4, 2)
    out = algo.score_rollouts(acc.clone(), {"accuracy": acc}, 4, _ctx(mask, **_care_fields([0.9, 0.5, 0.9, 0.5])))
    adv = algo.compute_advantages(out.rewards, 4, _ctx(mask))[:, 0]
    # R = (1.5, 1, 1.5, 1): mean 1.25, std 0.288675; A = ±0.25 / (0.288675 + 1e-4).
    a = 0.25 / (math.sqrt(1 / 12) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, a, -a]), rtol=0, atol=1e-5)
    assert (Algorithm(AlgorithmConfig()).compute_advantages(acc, 4, _ctx(mask)) == 0).all()
    # All correct and all equally confident: everyone bonused, zero std, A = 0.
    out = algo.score_rollouts(acc.clone(), {"accuracy": acc}, 4, _ctx(mask, **_care_fields([0.7] * 4)))
    assert (out.rewards == 1.5).all() and (algo.compute_advantages(out.rewards, 4, _ctx(mask)) == 0).all()


def test_single_correct_response_is_always_consistent_with_itself() -> None:
    algo = Care(_cfg(bonus_coef=0.5))
    acc = torch.tensor([0.0, 1.0, 0.0, 0.0])
    out = algo.score_rollouts(acc.clone(), {"accuracy": acc}, 4,
                              _ctx(torch.ones(4, 1), **_care_fields([0.9, 0.1, 0.9, 0.9])))
    torch.testing.assert_close(out.rewards, torch.tensor([0.0, 1.5, 0.0, 0.0]))


def test_device_scope_equals_group_scope_at_one_prompt_per_device() -> None:
    gen = torch.Generator().manual_seed(3)
    n, g = 16, 4
    acc = (torch.rand(n, generator=gen) > 0.4).float()
    fields = {"ema_logprobs": -torch.rand(n, 5, generator=gen) * 0.3,
              "answer_mask": (torch.rand(n, 5, generator=gen) > 0.3).float()}
    # One prompt per (rank, mini-batch), listed in an arbitrary order.
    devices = [[5, 4, 7, 6], [0, 1, 2, 3], [12, 13, 14, 15], [9, 8, 11, 10]]
    by_group = Care(_cfg()).score_rollouts(acc.clone(), {"accuracy": acc}, g, _ctx(torch.ones(n, 5), **fields))
    by_device = Care(_cfg(group_scope="device")).score_rollouts(
        acc.clone(), {"accuracy": acc}, g, _ctx(torch.ones(n, 5), **fields, device_mini_batches=devices))
    assert by_group.metrics["care/bonus_rate"] > 0
    torch.testing.assert_close(by_device.rewards, by_group.rewards)
    assert by_device.metrics == by_group.metrics


def test_device_scope_mixes_groups_with_two_prompts_per_device() -> None:
    acc = torch.tensor([1.0, 0.0, 1.0, 1.0])  # group 0 mean 0.5, group 1 mean 1.0; device mean 0.75
    fields = {**_care_fields([0.9, 0.9, 0.6, 0.9]), "device_mini_batches": [[0, 1, 2, 3]]}
    group = Care(_cfg(bonus_coef=1.0)).score_rollouts(acc.clone(), {"accuracy": acc}, 2,
                                                      _ctx(torch.ones(4, 3), **fields))
    device = Care(_cfg(bonus_coef=1.0, group_scope="device")).score_rollouts(
        acc.clone(), {"accuracy": acc}, 2, _ctx(torch.ones(4, 3), **fields))
    # Per group: group 1 c̄ = 0.75 -> seq 3 only. Per device: H = {0, 2, 3}, c̄ = 0.8 -> seqs 0 and 3.
    torch.testing.assert_close(group.rewards, torch.tensor([2.0, 0.0, 1.0, 2.0]))
    torch.testing.assert_close(device.rewards, torch.tensor([2.0, 0.0, 1.0, 2.0]))
    acc2 = torch.tensor([1.0, 0.0, 1.0, 1.0])
    fields2 = {**_care_fields([0.7, 0.9, 0.75, 0.9]), "device_mini_batches": [[0, 1, 2, 3]]}
    group = Care(_cfg(bonus_coef=1.0)).score_rollouts(acc2.clone(), {"accuracy": acc2}, 2,
                                                      _ctx(torch.ones(4, 3), **fields2))
    device = Care(_cfg(bonus_coef=1.0, group_scope="device")).score_rollouts(
        acc2.clone(), {"accuracy": acc2}, 2, _ctx(torch.ones(4, 3), **fields2))
    # Group 0's lone correct answer is always bonused; per device c̄ = 0.7833 excludes it.
    torch.testing.assert_close(group.rewards, torch.tensor([2.0, 0.0, 1.0, 2.0]))
    torch.testing.assert_close(device.rewards, torch.tensor([1.0, 0.0, 1.0, 2.0]))


def test_capabilities_and_missing_inputs() -> None:
    algo = Care(_cfg(ema_decay=0.99, ema_update_every=5))
    assert algo.ema_reference() == EmaSpec(decay=0.99, update_every=5)
    assert algo.needs_answer_span and not algo.needs_reference
    assert algo.views() == () and algo.select_for_update(torch.zeros(2, 1), 2, _ctx(torch.ones(2, 1))) is None
    acc = torch.ones(2)
    with pytest.raises(KeyError, match="algorithm.care.accuracy_key='accuracy'.*'acc'"):
        algo.score_rollouts(acc, {"acc": acc}, 2, _ctx(torch.ones(2, 1), **_care_fields([0.5, 0.5])))
    with pytest.raises(KeyError, match="ema_logprobs"):
        algo.score_rollouts(acc, {"accuracy": acc}, 2, _ctx(torch.ones(2, 1)))
    # group_scope=device reads the units, a typed field of the step context: it cannot lack them.
    with pytest.raises(TypeError, match="device_mini_batches"):
        StepContext(response_mask=torch.ones(2, 1), old_logprobs=torch.zeros(2, 1), step=1,  # type: ignore[call-arg]
                    total_steps=1, micro_batches=[[0, 1]], branch=torch.zeros(2, dtype=torch.long),
                    **_care_fields([0.5, 0.5]))
    # A custom accuracy sub-score name.
    out = Care(_cfg(accuracy_key="iou")).score_rollouts(torch.tensor([1.0, 0.0]), {"iou": torch.tensor([1.0, 0.0])},
                                                        2, _ctx(torch.ones(2, 1), **_care_fields([0.5, 0.5])))
    assert out.rewards.tolist() == [1.5, 0.0]


@pytest.mark.parametrize("overrides, care, key", [
    ({"kl_coef": 0.04}, {}, "algorithm.kl_coef"),
    ({}, {"ema_decay": 1.0}, "algorithm.care.ema_decay"),
    ({}, {"ema_update_every": 0}, "algorithm.care.ema_update_every"),
    ({}, {"bonus_coef": -1.0}, "algorithm.care.bonus_coef"),
    ({}, {"confidence_upper_bound": 0.0}, "algorithm.care.confidence_upper_bound"),
    ({}, {"margin": -0.1}, "algorithm.care.margin"),
])
def test_config_errors_name_the_key(overrides: dict[str, object], care: dict[str, object], key: str) -> None:
    # The care keys fail when CareConfig is built (it validates itself), algorithm.kl_coef when
    # the algorithm is checked.
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_algorithm(AlgorithmConfig(name="care", care=CareConfig(**care), **overrides))  # type: ignore[arg-type]


def test_care_yaml_composes_with_the_authors_settings() -> None:
    from rl_vlm.compose import compose

    cfg = compose(["algorithm=care"])
    a = cfg.algorithm
    assert a.name == "care" and a.adv_eps == 1e-4 and a.kl_coef == 0.0 and a.loss_agg == "seq-mean-token-mean"
    assert a.care == CareConfig()
    assert isinstance(build_algorithm(a), Care)


# ----------------------------------------------------------------------------- vs the authors' code
def _authors_care_block(acc: torch.Tensor, ref_logps: torch.Tensor, mask_answer: torch.Tensor,
                        bonus_coefficient: float, upper_bound: float | None, margin: float | None) -> torch.Tensor:
    """TEST-ONLY transcription of the CARE block of TencentARC/GRPO-CARE
    ``grpo_trainer_ref_ema.py::compute_loss`` (one device's batch), from algorithms.md §4.5."""
    avg_logps = (ref_logps * mask_answer).sum(dim=1) / (mask_answer.sum(dim=1) + 1e-6)
    conf = torch.exp(avg_logps)
    if upper_bound is not None:
        conf = torch.clamp(conf, max=upper_bound)
    bonus = torch.zeros_like(acc)
    accurate = (acc > 0.1) * (acc >= acc.mean())
    mean_selected = conf[accurate].mean()
    confident = conf >= mean_selected if margin is None else conf >= (mean_selected - margin)
    bonus_mask = accurate * confident
    bonus[bonus_mask] = acc[bonus_mask]
    return bonus * bonus_coefficient


def _authors_advantages(rewards: torch.Tensor, g: int) -> torch.Tensor:
    mean = rewards.view(-1, g).mean(dim=1).repeat_interleave(g)
    std = rewards.view(-1, g).std(dim=1).repeat_interleave(g)
    return (rewards - mean) / (std + 1e-4)


@pytest.mark.parametrize("margin", [None, 0.01])
@pytest.mark.parametrize("seed", range(6))
def test_matches_the_authors_block_on_random_tensors(seed: int, margin: float | None) -> None:
    gen = torch.Generator().manual_seed(seed)
    devices, g, length = 4, 8, 12
    n = devices * g
    # Binary and graded accuracies, random spans (some empty), near-confident EMA log-probs so
    # the 0.95 clamp bites.
    acc = (torch.rand(n, generator=gen) > 0.5).float() if seed % 2 else torch.rand(n, generator=gen).round(decimals=1)
    fmt = (torch.rand(n, generator=gen) > 0.2).float()
    ref = -torch.rand(n, length, generator=gen) * (0.02 + 0.5 * (seed % 3))
    span = (torch.rand(n, length, generator=gen) > 0.5).float()
    span[::7] = 0.0
    algo = Care(_cfg(bonus_coef=0.5, margin=margin or 0.0, group_scope="device"))
    units = [list(range(d * g, (d + 1) * g)) for d in range(devices)]
    out = algo.score_rollouts(acc + fmt, {"accuracy": acc, "format": fmt}, g,
                              _ctx(torch.ones(n, length), ref, span, device_mini_batches=units))
    expected = torch.cat([acc[u] + fmt[u] + _authors_care_block(acc[u], ref[u], span[u], 0.5, 0.95, margin)
                          for u in map(torch.tensor, units)])
    torch.testing.assert_close(out.rewards, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(group_advantages(out.rewards, g, eps=1e-4), _authors_advantages(expected, g),
                               rtol=0, atol=1e-4)
    adv = algo.compute_advantages(out.rewards, g, _ctx(torch.ones(n, length)))
    torch.testing.assert_close(adv[:, 0], _authors_advantages(expected, g), rtol=0, atol=1e-4)
