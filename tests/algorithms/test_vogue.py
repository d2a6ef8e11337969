"""VOGUE / DUPL (algorithms.md §5): the noisy image view, the branch schedule and draws, the
code-mode and paper-mode advantage shaping, the Vogue hooks, config validation, and a numerical
comparison with a test-only transcription of the authors' compute_grpo_outcome_advantage_dupl."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rl_vlm.algorithms import StepContext, ViewOutputs, build_algorithm
from rl_vlm.algorithms.core import group_advantages
from rl_vlm.algorithms.vogue import (
    VIEW_NAME,
    NoisyImageTransform,
    Vogue,
    branch_probability,
    draw_code_branch,
    draw_paper_branches,
    noisy_counterpart_indices,
    sampled_token_entropy,
    sampled_token_symmetric_kl,
    shape_advantages_code,
    shape_advantages_paper,
)
from rl_vlm.config import AlgorithmConfig, ConfigError, VogueConfig


def _cfg(norm: bool = True, **vogue: object) -> AlgorithmConfig:
    return AlgorithmConfig(name="vogue", norm_adv_by_std=norm, vogue=VogueConfig(**vogue))  # type: ignore[arg-type]


def _always(**vogue: object) -> AlgorithmConfig:
    """Dr.GRPO-style A = R − mean (easy to read) and the noisy branch on every step."""
    return _cfg(norm=False, schedule="fixed", fixed_prob=1.0, **vogue)


def _never(**vogue: object) -> AlgorithmConfig:
    return _cfg(norm=False, schedule="fixed", fixed_prob=0.0, **vogue)


# ----------------------------------------------------------------------------- noisy image view
def _image(mode: str = "RGB", size: tuple[int, int] = (40, 28)) -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_noisy_view_keeps_size_is_seeded_and_changes_the_image(mode: str) -> None:
    t = NoisyImageTransform(noise_std=0.2, strength=1.0, rotation_degrees=10.0)
    img = _image(mode)
    a = t(img, np.random.default_rng(7))
    b = t(img, np.random.default_rng(7))
    c = t(img, np.random.default_rng(8))
    assert a.size == img.size and a.mode == img.mode
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(img))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_noisy_view_converts_rgba_and_keeps_the_input_untouched() -> None:
    img = _image("RGBA")
    before = np.asarray(img).copy()
    out = NoisyImageTransform()(img, np.random.default_rng(0))
    assert out.mode == "RGB" and out.size == img.size
    assert np.array_equal(np.asarray(img), before)


def test_noise_free_view_is_only_a_flip_of_the_input() -> None:
    """strength 0 and no rotation: no jitter, no noise, no re-quantisation loss."""
    img = _image("RGB")
    arr = np.asarray(img)
    flips = [arr, arr[:, ::-1], arr[::-1], arr[::-1, ::-1]]
    for seed in range(8):
        out = np.asarray(NoisyImageTransform(noise_std=0.2, strength=0.0, rotation_degrees=0.0)(
            img, np.random.default_rng(seed)))
        assert any(np.array_equal(out, f) for f in flips)


def test_noise_scale_follows_sigma() -> None:
    img = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    t = NoisyImageTransform(noise_std=0.1, strength=1.0, rotation_degrees=0.0)
    # A flat grey image: flips, brightness ±15% and contrast (no-op on flat) leave it flat, so the
    # pixel std is the noise's: 0.1 * 255 = 25.5 levels.
    out = np.asarray(t(img, np.random.default_rng(1))).astype(np.float64)
    assert out.std() == pytest.approx(25.5, rel=0.05)


# ----------------------------------------------------------------------------- schedule and draws
def test_branch_probability_schedule() -> None:
    assert branch_probability(0, 200) == 1.0
    assert branch_probability(1, 200) == pytest.approx(0.995)
    assert branch_probability(50, 200) == pytest.approx(0.75)
    assert branch_probability(200, 200) == 0.0 and branch_probability(300, 200) == 0.0
    assert branch_probability(5, 0) == 0.0
    assert branch_probability(5, 200, "fixed", 0.3) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        branch_probability(1, 2, "cosine")


def test_branch_draws_are_deterministic_per_step_with_the_right_frequency() -> None:
    assert [draw_code_branch(s, 0.5) for s in range(50)] == [draw_code_branch(s, 0.5) for s in range(50)]
    assert all(draw_code_branch(s, 1.0) for s in range(20)) and not any(draw_code_branch(s, 0.0) for s in range(20))
    freq = np.mean([draw_code_branch(s, 0.3) for s in range(4000)])
    assert freq == pytest.approx(0.3, abs=0.03)
    assert [draw_code_branch(s, 0.5, seed=1) for s in range(50)] != [draw_code_branch(s, 0.5) for s in range(50)]
    z = draw_paper_branches(3, 0.4, 5000)
    assert torch.equal(z, draw_paper_branches(3, 0.4, 5000)) and float(z.double().mean()) == pytest.approx(0.4, abs=0.03)
    assert not torch.equal(z, draw_paper_branches(4, 0.4, 5000))


def test_noisy_counterpart_indices() -> None:
    assert noisy_counterpart_indices(torch.tensor([False, True, True, False])).tolist() == [0, 5, 6, 3]


# ----------------------------------------------------------------------------- tensor math
def test_sampled_token_symmetric_kl_and_entropy_by_hand() -> None:
    raw = torch.tensor([[np.log(0.5), np.log(0.9), 0.0]], dtype=torch.float64)
    aug = torch.tensor([[np.log(0.25), np.log(0.9), float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    u = sampled_token_symmetric_kl(raw, aug, mask)
    # ½[0.5·ln(0.5/(0.25+1e-8)) + 0.25·ln(0.25/(0.5+1e-8))]; identical views -> 0.9·ln(0.9/(0.9+1e-8)) ≈ -1e-8.
    expected0 = 0.5 * (0.5 * np.log(0.5 / (0.25 + 1e-8)) + 0.25 * np.log(0.25 / (0.5 + 1e-8)))
    assert u[0, 0].item() == pytest.approx(expected0, rel=1e-9)
    assert u[0, 1].item() == pytest.approx(0.9 * np.log(0.9 / (0.9 + 1e-8)), rel=1e-6) and abs(u[0, 1].item()) < 1e-7
    assert u[0, 2].item() == 0.0  # padding, NaN not leaked
    h = sampled_token_entropy(raw, mask)
    torch.testing.assert_close(h, torch.tensor([[0.5 * np.log(2), -0.9 * np.log(0.9), 0.0]], dtype=torch.float64))


def test_code_shaping_by_hand() -> None:
    adv = torch.tensor([[0.1, 0.1], [-0.1, -0.1], [0.0, 0.0]])
    mask = torch.ones(3, 2)
    raw = torch.log(torch.tensor([[0.5, 0.9], [0.5, 0.9], [0.5, 0.9]]))
    aug = torch.log(torch.tensor([[0.01, 0.9], [0.01, 0.9], [0.01, 0.9]]))
    shaped, parts = shape_advantages_code(adv, raw, aug, mask, use_aug=True)
    u0 = sampled_token_symmetric_kl(raw, aug, mask)[0, 0].item()  # ≈ 0.958 ≫ |A|/2
    # Token 0: A' = A + sign·|A|/2; ψ = min(0.4·H_aug, |A'|/2) with H_aug = -0.01·ln 0.01 = 0.046.
    h_aug = -0.01 * np.log(0.01)
    assert u0 > 0.5
    assert shaped[0, 0].item() == pytest.approx(0.15 + min(0.4 * h_aug, 0.075), rel=1e-5)
    assert shaped[1, 0].item() == pytest.approx(-0.05 + min(0.4 * h_aug, 0.025), rel=1e-5)
    # Token 1 (identical views): u ≈ -1e-8 -> a ~1e-8 nudge, then ψ = min(0.4·0.0948, |A|/2).
    h_09 = -0.9 * np.log(0.9)
    assert shaped[0, 1].item() == pytest.approx(0.1 + min(0.4 * h_09, 0.05), abs=1e-7)
    # Zero-variance group: A = 0 stays exactly 0.
    assert (shaped[2] == 0).all() and (parts["perceptual"][2] == 0).all()


def test_code_shaping_sign_behaviour_bounds() -> None:
    """A > 0 is amplified up to ×2.25; A < 0 shrinks toward 0 but keeps its sign (§5.2.7)."""
    gen = torch.Generator().manual_seed(0)
    n, length = 64, 16
    adv = (torch.randn(n, 1, generator=gen) * 0.2).expand(n, length).clone()
    raw = -torch.rand(n, length, generator=gen) * 3
    aug = -torch.rand(n, length, generator=gen) * 3
    shaped, _ = shape_advantages_code(adv, raw, aug, torch.ones(n, length), use_aug=True)
    pos, neg = adv > 0, adv < 0
    assert (shaped[pos] >= adv[pos] - 1e-7).all() and (shaped[pos] <= 2.25 * adv[pos] + 1e-7).all()
    assert (shaped[neg] < 0).all() and (shaped[neg] >= adv[neg] - 1e-7).all()
    # Saturating both bonuses reaches exactly ×2.25 (and ×0.25 for A < 0).
    big_u_raw, big_u_aug = torch.zeros(2, 1), torch.full((2, 1), np.log(0.3))  # H(0.3) = 0.361 -> 0.4·H = 0.144
    s, _ = shape_advantages_code(torch.tensor([[0.01], [-0.01]]), big_u_raw, big_u_aug, torch.ones(2, 1), True)
    torch.testing.assert_close(s, torch.tensor([[0.0225], [-0.0025]]))


def test_code_shaping_without_the_noisy_branch_uses_raw_entropy_only() -> None:
    adv = torch.tensor([[1.0, 1.0]])
    raw, aug = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.01, 0.01]]))
    shaped, parts = shape_advantages_code(adv, raw, aug, torch.ones(1, 2), use_aug=False)
    assert (parts["perceptual"] == 0).all()
    torch.testing.assert_close(shaped, 1.0 + 0.4 * 0.5 * np.log(2) * torch.ones(1, 2))
    plain, _ = shape_advantages_code(adv, raw, aug, torch.ones(1, 2), use_aug=False, entropy_shaping=False)
    assert torch.equal(plain, adv)


def test_paper_shaping_by_hand() -> None:
    adv = torch.tensor([[0.4, 0.4], [-0.4, -0.4], [0.4, 0.0]])
    u_out = torch.tensor([[0.1, 1.0], [0.1, 1.0], [1.0, 5.0]])
    u_per = torch.tensor([[0.05, 5.0], [0.05, 5.0], [5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    noisy = torch.tensor([False, True, True])
    shaped, parts = shape_advantages_paper(adv, u_out, u_per, noisy, mask)
    # g_out = min(|A|/2, 0.4·u_out) = (0.04, 0.2); g_per = min(|A|/2, u_per) = (0.05, 0.2), noisy only.
    expected = torch.tensor([[0.44, 0.6], [-0.4 + 0.04 + 0.05, -0.4 + 0.2 + 0.2], [0.4 + 0.2 + 0.2, 0.0]])
    torch.testing.assert_close(shaped, expected)
    assert (parts["perceptual"][0] == 0).all()


# ----------------------------------------------------------------------------- the hooks, code mode
def _ctx(mask: torch.Tensor, raw: torch.Tensor | None = None, views: dict[str, ViewOutputs] | None = None,
         step: int = 1, total: int = 10, branch: torch.Tensor | None = None) -> StepContext:
    n = mask.shape[0]
    return StepContext(response_mask=mask, old_logprobs=torch.zeros_like(mask) if raw is None else raw, step=step,
                       total_steps=total, micro_batches=[list(range(n))], device_mini_batches=[list(range(n))],
                       branch=torch.zeros(n, dtype=torch.long) if branch is None else branch, views=views or {})


def _code_ctx(mask: torch.Tensor, raw: torch.Tensor, aug: torch.Tensor, step: int = 1, total: int = 10) -> StepContext:
    """Code mode's inputs: old log-probs with the raw image (``raw``) and the noisy one (``aug``)."""
    return _ctx(mask, raw, {VIEW_NAME: ViewOutputs(old_logprobs=aug)}, step, total)


def test_views_and_capabilities() -> None:
    code, paper = Vogue(_cfg()), Vogue(_cfg(mode="paper"))
    (view,) = code.views()
    assert view.name == VIEW_NAME and not view.with_grad and not view.full_kl and not view.per_response
    assert isinstance(view.transform, NoisyImageTransform) and view.transform.noise_std == 0.2
    assert code.rollout_views() == () and code.select_for_update(torch.zeros(2, 1), 2, _ctx(torch.ones(2, 1))) is None
    assert paper.views()[0].full_kl and paper.rollout_views() == paper.views()
    # The class-level answer (data.dynamic_sampling's check) agrees with the instances'.
    assert Vogue.has_rollout_views(_cfg(mode="paper")) and not Vogue.has_rollout_views(_cfg())
    assert code.ema_reference() is None and not code.needs_reference and not code.needs_answer_span


def test_compute_advantages_code_mode_and_metrics() -> None:
    algo = Vogue(_always())
    rewards = torch.tensor([0.6, 0.4, 1.0, 1.0])  # A = ±0.1 in group 0, 0 in group 1
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # seq 3 empty
    raw = torch.log(torch.full((4, 3), 0.5))
    aug = torch.log(torch.full((4, 3), 0.01))
    adv = algo.compute_advantages(rewards, 2, _code_ctx(mask, raw, aug))
    h_aug = -0.01 * np.log(0.01)
    hi, lo = 0.15 + min(0.4 * h_aug, 0.075), -0.05 + min(0.4 * h_aug, 0.025)
    torch.testing.assert_close(adv, torch.tensor([[hi, hi, 0.0], [lo, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                                                 dtype=torch.float32))
    m = algo.step_metrics()
    u = sampled_token_symmetric_kl(raw, aug, mask)[0, 0].item()
    assert m["vogue/uncertainty"] == pytest.approx(u, rel=1e-5)
    assert m["vogue/branch_prob"] == 1.0 and m["vogue/used_noisy"] == 1.0
    assert m["vogue/perceptual_bonus"] == pytest.approx((0.05 * 2 + 0.05) / 6, rel=1e-5)


def test_compute_advantages_without_the_branch_and_with_identical_views() -> None:
    rewards, mask = torch.tensor([1.0, 0.0]), torch.ones(2, 2)
    raw = torch.log(torch.tensor([[0.5, 0.2], [0.7, 0.9]]))
    base = Vogue(_never()).compute_advantages(rewards, 2, _code_ctx(mask, raw, raw - 3.0))
    expected, _ = shape_advantages_code(torch.tensor([[0.5, 0.5], [-0.5, -0.5]]), raw, raw - 3.0, mask, False)
    torch.testing.assert_close(base, expected)
    # Identical views (text-only prompts, where the view reuses the raw inputs): u ≈ 0, so only
    # the entropy bonus acts.
    algo = Vogue(_always())
    same = algo.compute_advantages(rewards, 2, _code_ctx(mask, raw, raw.clone()))
    torch.testing.assert_close(same, expected, rtol=0, atol=1e-7)
    assert abs(algo.step_metrics()["vogue/uncertainty"]) < 1e-7


def test_code_branch_follows_the_annealed_schedule() -> None:
    algo = Vogue(_cfg())
    rewards, mask = torch.tensor([1.0, 0.0]), torch.ones(2, 1)
    raw, aug = torch.log(torch.tensor([[0.5], [0.5]])), torch.log(torch.tensor([[0.01], [0.01]]))
    used = []
    for step in range(1, 201):
        algo.compute_advantages(rewards, 2, _code_ctx(mask, raw, aug, step, 200))
        assert algo.step_metrics()["vogue/branch_prob"] == pytest.approx(1 - step / 200)
        assert algo.step_metrics()["vogue/used_noisy"] == float(draw_code_branch(step, 1 - step / 200))
        used.append(algo.step_metrics()["vogue/used_noisy"])
    assert 0.35 < np.mean(used) < 0.65 and np.mean(used[:50]) > np.mean(used[-50:])
    assert used[-1] == 0.0


def test_zero_variance_groups_and_single_valid_sequence() -> None:
    algo = Vogue(_always())
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    raw, aug = -torch.rand(4, 2, generator=gen) * 4, -torch.rand(4, 2, generator=gen) * 4
    adv = algo.compute_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2, _code_ctx(mask, raw, aug))
    assert (adv[:2] == 0).all()  # all-equal group
    # The empty response gets nothing; its group's lone valid sequence keeps A = 0.5, amplified.
    assert (adv[2] == 0).all() and 0.5 < adv[3, 0] <= 2.25 * 0.5 and adv[3, 1] == 0
    assert torch.isfinite(adv).all()


def test_missing_inputs_are_named() -> None:
    with pytest.raises(KeyError, match=rf"views\['{VIEW_NAME}'\]\.old_logprobs"):
        Vogue(_cfg()).compute_advantages(torch.ones(2), 2, _ctx(torch.ones(2, 1), torch.zeros(2, 1), total=2))
    with pytest.raises(KeyError, match=rf"views\['{VIEW_NAME}'\]\.kl"):
        Vogue(_cfg(mode="paper")).compute_advantages(torch.ones(2), 2,
                                                     _code_ctx(torch.ones(2, 1), *torch.zeros(2, 2, 1)))
    # The step and total are typed fields of the step context: it cannot lack them.
    with pytest.raises(TypeError, match="step"):
        StepContext(response_mask=torch.ones(2, 1), old_logprobs=torch.zeros(2, 1),  # type: ignore[call-arg]
                    micro_batches=[[0, 1]], device_mini_batches=[[0, 1]], branch=torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- the hooks, paper mode
def _paper_batch(b: int = 2, g: int = 3, length: int = 4, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, StepContext]:
    gen = torch.Generator().manual_seed(seed)
    n = 2 * b * g
    rewards = (torch.rand(n, generator=gen) > 0.5).float()
    mask = torch.ones(n, length)
    mask[1, 2:] = 0.0
    old = -torch.rand(n, length, generator=gen) * 2
    kl = torch.rand(n, length, generator=gen) * 0.3
    kl_rev = torch.rand(n, length, generator=gen) * 0.3
    # Paper mode reads the KLs, not the view's own log-probs (NaN would show).
    view = ViewOutputs(old_logprobs=torch.full_like(old, float("nan")), kl=kl, kl_rev=kl_rev)
    branch = torch.cat([torch.zeros(b * g), torch.ones(b * g)]).long()
    return rewards, mask, _ctx(mask, old, {VIEW_NAME: view}, step=3, total=10, branch=branch)


def test_compute_advantages_paper_mode() -> None:
    algo = Vogue(_cfg(mode="paper"))
    rewards, mask, ctx = _paper_batch()
    adv = algo.compute_advantages(rewards, 3, ctx)
    base = group_advantages(rewards, 3)[:, None] * mask
    view = ctx.views[VIEW_NAME]
    assert view.kl is not None and view.kl_rev is not None
    u_per = 0.5 * (view.kl + view.kl_rev)
    u_out = sampled_token_entropy(ctx.old_logprobs, mask)
    g_out = torch.minimum(base.abs() / 2, 0.4 * u_out) * mask
    g_per = torch.minimum(base.abs() / 2, u_per) * mask * (ctx.branch == 1).float()[:, None]
    torch.testing.assert_close(adv, base + g_out + g_per)
    assert algo.step_metrics()["vogue/branch_prob"] == pytest.approx(0.7)
    assert algo.step_metrics()["vogue/uncertainty"] == pytest.approx(float((u_per * mask).sum() / mask.sum()), rel=1e-5)


def test_select_for_update_picks_raw_or_noisy_counterparts() -> None:
    algo = Vogue(_cfg(mode="paper"))
    rewards, _, ctx = _paper_batch(b=4, g=5)
    adv = algo.compute_advantages(rewards, 5, ctx)
    idx = algo.select_for_update(adv, 5, ctx)
    assert idx is not None and idx.dtype == torch.long and idx.shape == (20,)
    slot = torch.arange(20)
    assert ((idx == slot) | (idx == slot + 20)).all()
    assert torch.equal(idx, algo.select_for_update(adv, 5, ctx))  # deterministic for the step
    assert algo.step_metrics()["vogue/used_noisy"] == pytest.approx(float((idx >= 20).double().mean()))
    # p = 1 at step 0: all noisy; p = 0 at the end: all raw.
    assert torch.equal(algo.select_for_update(adv, 5, replace(ctx, step=0)), slot + 20)
    assert torch.equal(algo.select_for_update(adv, 5, replace(ctx, step=10)), slot)
    with pytest.raises(ValueError, match="branch"):
        algo.select_for_update(adv, 5, replace(ctx, branch=ctx.branch.flip(0)))


# ----------------------------------------------------------------------------- config and composition
@pytest.mark.parametrize("field, value", [
    ("noise_std", -0.1), ("augmentation_strength", -1.0), ("rotation_degrees", 200.0), ("beta_p", 0.0),
    ("alpha_o", -0.4), ("beta_o", 0.0), ("fixed_prob", 1.5), ("seed", -1),
])
def test_config_errors_name_the_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"algorithm\.vogue\.{field}"):
        build_algorithm(_cfg(**{field: value}))


def test_paper_mode_rejects_a_negative_perceptual_weight() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.vogue\.alpha_p"):
        Vogue(_cfg(mode="paper", alpha_p=-1.0))
    Vogue(_cfg(alpha_p=-1.0))  # the code keeps the sign (its KL-transition phase)


def test_yamls_compose() -> None:
    from rl_vlm.compose import compose

    code = compose(["algorithm=vogue"]).algorithm
    paper = compose(["algorithm=vogue_paper"]).algorithm
    assert code.vogue == VogueConfig() and code.clip_high == 0.3 and code.kl_coef == 0.0
    assert paper.vogue.mode == "paper" and paper.vogue.noise_std == 0.4
    assert isinstance(build_algorithm(code), Vogue) and isinstance(build_algorithm(paper), Vogue)


def test_care_plus_vogue_chains_rewards_then_advantages() -> None:
    algo = build_algorithm(AlgorithmConfig(name="care+vogue", norm_adv_by_std=False,
                                           vogue=VogueConfig(schedule="fixed", fixed_prob=1.0)))
    acc = torch.tensor([1.0, 1.0, 0.0, 0.0])
    ema = torch.log(torch.tensor([[0.9], [0.5], [0.9], [0.9]]))
    ctx = replace(_code_ctx(torch.ones(4, 1), torch.log(torch.full((4, 1), 0.5)), torch.log(torch.full((4, 1), 0.01))),
                  ema_logprobs=ema, answer_mask=torch.ones(4, 1))
    scores = algo.score_rollouts(acc.clone(), {"accuracy": acc}, 4, ctx)
    torch.testing.assert_close(scores.rewards, torch.tensor([1.5, 1.0, 0.0, 0.0]))
    adv = algo.compute_advantages(scores.rewards, 4, ctx)
    base = scores.rewards - scores.rewards.mean()
    expected, _ = shape_advantages_code(base[:, None], ctx.old_logprobs, ctx.views[VIEW_NAME].old_logprobs,
                                        torch.ones(4, 1), True)
    torch.testing.assert_close(adv, expected)
    assert "care/bonus_rate" in scores.metrics and "vogue/uncertainty" in algo.step_metrics()


# ----------------------------------------------------------------------------- vs the authors' code
def _authors_dupl(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray,
                  raw_log_probs: torch.Tensor, aug_log_probs: torch.Tensor, use_augmented_branch: bool,
                  eps: float = 1e-6, alpha: float = 0.4, kappa: float = 2.0, use_entropy_shaping: bool = True,
                  kl_penalty_weight: float = 1.0) -> torch.Tensor:
    """TEST-ONLY transcription of ruiiu/DUPL ``verl/trainer/core_algos.py::
    compute_grpo_outcome_advantage_dupl`` with the released flags (symmetric KL, use_kl_penalty,
    no KL transition), from algorithms.md §5.4."""
    scores = token_level_rewards.sum(dim=-1)
    id2score: dict = defaultdict(list)
    id2mean, id2std = {}, {}
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        id2mean[idx] = torch.mean(torch.tensor(id2score[idx]))
        id2std[idx] = torch.std(torch.tensor(id2score[idx]))
    for i in range(scores.shape[0]):
        scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + eps)
    advantages = scores.unsqueeze(-1) * response_mask

    raw_probs, aug_probs = torch.exp(raw_log_probs), torch.exp(aug_log_probs)
    forward_kl = F.kl_div(torch.log(aug_probs + 1e-8), raw_probs, reduction="none")
    inverse_kl = F.kl_div(torch.log(raw_probs + 1e-8), aug_probs, reduction="none")
    kl_penalty = (forward_kl + inverse_kl) / 2.0 * response_mask
    if use_augmented_branch:
        kl_term = kl_penalty_weight * 1.0 * kl_penalty
        contribution = torch.min(torch.abs(kl_term), torch.abs(advantages) / 2.0) * torch.sign(kl_term)
        advantages = advantages + contribution * float(use_augmented_branch)
    if use_entropy_shaping:
        lp = aug_log_probs if use_augmented_branch else raw_log_probs
        entropy = -torch.exp(lp) * lp * response_mask
        psi = torch.min(alpha * entropy, torch.abs(advantages) / kappa) * response_mask
        advantages = advantages + psi
    return advantages


@pytest.mark.parametrize("use_aug", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_matches_the_authors_dupl_on_random_tensors(seed: int, use_aug: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    b, g, length = 6, 5, 10
    n = b * g
    lengths = torch.randint(0, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    rewards = (torch.rand(n, generator=gen) > 0.5).float() if seed % 2 else torch.rand(n, generator=gen)
    rewards[:g] = 1.0  # one zero-variance group
    token_rewards = torch.zeros(n, length)
    token_rewards[:, 0] = rewards
    raw = -torch.rand(n, length, generator=gen) * (0.5 + seed)
    aug = raw + torch.randn(n, length, generator=gen) * 0.5
    aug = aug.clamp(max=0.0)
    index = np.repeat(np.arange(b), g).astype(object)
    expected = _authors_dupl(token_rewards.clone(), mask, index, raw, aug, use_aug)

    algo = Vogue(_cfg(schedule="fixed", fixed_prob=1.0 if use_aug else 0.0))
    adv = algo.compute_advantages(rewards, g, _code_ctx(mask, raw, aug))
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)


def test_variant_modules_import_with_torch_and_numpy_only() -> None:
    import subprocess
    import sys

    code = ("import sys, rl_vlm.algorithms.care, rl_vlm.algorithms.vogue; "
            "heavy = [m for m in ('ray', 'vllm', 'deepspeed', 'PIL') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
