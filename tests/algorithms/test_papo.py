"""PAPO (algorithms.md §2): view, perception KL, double entropy, options, aggregation, and a
transcription of the authors' ``dp_actor.update_policy`` block (test-only) for comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rl_vlm.algorithms import LossInputs, StepContext, ViewOutputs, build_algorithm
from rl_vlm.algorithms.core import masked_row_quantile
from rl_vlm.algorithms.papo import (
    VIEW,
    Papo,
    annealed_gamma,
    perception_kl,
    quantile_token_mask,
)
from rl_vlm.algorithms.views import TileBlackening
from rl_vlm.config import AlgorithmConfig, PapoConfig

F64 = torch.float64


def _views(old: torch.Tensor, grad: torch.Tensor | None = None) -> dict[str, ViewOutputs]:
    """PAPO's masked view: the frozen log-probs ``old`` and, with recompute_with_grad, ``grad``."""
    return {VIEW: ViewOutputs(old_logprobs=old, logprobs=grad)}


def _ctx(mask: torch.Tensor, step: int = 1, total_steps: int = 1) -> StepContext:
    n = mask.shape[0]
    return StepContext(response_mask=mask, old_logprobs=torch.zeros_like(mask), step=step, total_steps=total_steps,
                       micro_batches=[list(range(n))], device_mini_batches=[list(range(n))],
                       branch=torch.zeros(n, dtype=torch.long))


_BASE_KEYS = ("kl_coef", "clip_low", "clip_high", "clip_dual", "loss_agg")


def _cfg(**papo: Any) -> AlgorithmConfig:
    """AlgorithmConfig(name="papo") with the base keys above and every other key in ``papo``."""
    base = {k: v for k, v in papo.items() if k in _BASE_KEYS}
    sub = {k: v for k, v in papo.items() if k not in base}
    return AlgorithmConfig(name="papo", papo=PapoConfig(**sub), **base)


def _inputs(logprobs: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
            views: dict[str, ViewOutputs], ref: torch.Tensor | None = None, num_tokens: float | None = None,
            num_seqs: float | None = None, step: int = 1, total_steps: int = 1) -> LossInputs:
    return LossInputs(
        logprobs=logprobs, old_logprobs=old, ref_logprobs=ref, advantages=adv, response_mask=mask, entropy=None,
        num_tokens=float(mask.sum()) if num_tokens is None else num_tokens,
        num_seqs=float((mask.sum(-1) > 0).sum()) if num_seqs is None else num_seqs,
        max_response_len=8, step=step, total_steps=total_steps, views=views)


def _random_batch(n: int = 5, width: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, width, dtype=F64)
    for i, (start, length) in enumerate([(1, 5), (2, 2), (0, 7), (4, 3), (3, 0), (0, 6), (2, 4)][:n]):
        mask[i, start:start + length] = 1.0
    old = -torch.rand(n, width, generator=gen, dtype=F64) * 2.0
    return {
        "mask": mask, "old": old,
        "theta": torch.randn(n, width, generator=gen, dtype=F64) * 0.3,
        "ref": old + torch.randn(n, width, generator=gen, dtype=F64) * 0.3,
        "aug": old + torch.randn(n, width, generator=gen, dtype=F64) * 0.8,
        "adv": torch.randn(n, 1, generator=gen, dtype=F64).expand(n, width) * mask,
    }


# ----------------------------------------------------------------------------- the authors' code, transcribed
def _masked_mean(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return (values * mask).sum() / (mask.sum() + eps)


def _k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    # PAPO core_algos.compute_kl(..., "low_var_kl") without its .float() cast (we compare in fp64).
    kl = (ref_log_probs - log_probs).clamp(-20.0, 20.0)
    return torch.clamp(kl.exp() - kl - 1, min=-10.0, max=10.0)


def _authors_pg(old: torch.Tensor, log_probs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                low: float, high: float, dual: float) -> torch.Tensor:
    """PAPO core_algos.compute_policy_loss, loss_avg_mode="token"."""
    neg = torch.clamp(log_probs - old, -20.0, 20.0)
    ratio = torch.exp(neg)
    clipped_ratio = torch.exp(torch.clamp(neg, math.log(1.0 - low), math.log(1.0 + high)))
    l1, l2, l3 = -adv * ratio, -adv * clipped_ratio, -adv * dual
    higher = torch.max(l1, l2)
    final = torch.where(adv < 0, torch.min(higher, l3), higher)
    return _masked_mean(final, mask)


def _authors_papo_micro_batch(log_probs: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                              aug: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *, clip_low: float,
                              clip_high: float, clip_dual: float, kl_coef: float, kl_prcp_coef_t: float,
                              kl_prcp_coef: float, aug_entropy_coef: float, ori_entropy_coef: float,
                              token_mask_top_p: float = 0.0, kl_prcp_clipping: float = 0.0,
                              gradient_accumulation: int = 1) -> torch.Tensor:
    """PAPO ``dp_actor.update_policy`` L286–400 for one micro-batch, loss_avg_mode="token"."""
    entropy_loss = -_masked_mean(log_probs, mask)
    pg_loss = _authors_pg(old, log_probs, adv, mask, clip_low, clip_high, clip_dual)
    if kl_coef:
        assert ref is not None
        pg_loss = pg_loss + _masked_mean(_k3(log_probs, ref), mask) * kl_coef
    discount_ratio = 1.0
    aug_entropy_loss = -_masked_mean(aug, mask)
    aug_kld = _k3(log_probs, aug) * torch.ones(log_probs.shape[0], 1, dtype=log_probs.dtype)
    if token_mask_top_p:
        masked_kld = aug_kld.masked_fill(~mask.bool(), float("nan"))
        thresh = torch.nanquantile(masked_kld, 1.0 - token_mask_top_p, dim=1, keepdim=True)
        aug_kld = aug_kld * (aug_kld >= thresh).to(aug_kld.dtype)
    if kl_prcp_clipping:
        aug_kld = torch.clamp(aug_kld, min=0.0, max=kl_prcp_clipping)
    kl_prcp_loss = _masked_mean(aug_kld, mask)
    if kl_prcp_coef_t != kl_prcp_coef:
        discount_ratio = kl_prcp_coef_t / kl_prcp_coef
    pg_loss = pg_loss - kl_prcp_loss * kl_prcp_coef_t
    if aug_entropy_coef:
        pg_loss = pg_loss + aug_entropy_coef * discount_ratio * aug_entropy_loss
    if ori_entropy_coef:
        pg_loss = pg_loss + ori_entropy_coef * discount_ratio * entropy_loss
    return pg_loss / gradient_accumulation


# ----------------------------------------------------------------------------- registry, view, validation
def test_registry_and_view() -> None:
    algo = build_algorithm(AlgorithmConfig(name="papo"))
    assert type(algo) is Papo
    (view,) = algo.views()
    assert view.name == "papo_mask" and not view.with_grad and not view.per_response and not view.full_kl
    assert view.transform == TileBlackening(patch_size=14, prob=0.6)
    (grad_view,) = Papo(_cfg(recompute_with_grad=True, mask_prob=1.0, patch_size=28)).views()
    assert grad_view.with_grad and grad_view.transform == TileBlackening(patch_size=28, prob=1.0)


@pytest.mark.parametrize("field, value, key", [
    ("gamma", -0.1, "algorithm.papo.gamma"),
    ("kl_estimator", "low_var_kl", "algorithm.papo.kl_estimator"),
    ("entropy_ori", -1.0, "algorithm.papo.entropy_ori"),
    ("entropy_aug", -1.0, "algorithm.papo.entropy_aug"),
    ("mask_prob", 1.2, "algorithm.papo.mask_prob"),
    ("patch_size", 0, "algorithm.papo.patch_size"),
    ("kl_clip", -0.2, "algorithm.papo.kl_clip"),
    ("token_mask_quantile", 1.0, "algorithm.papo.token_mask_quantile"),
    ("schedule", "cosine", "algorithm.papo.schedule"),
])
def test_bad_values_name_the_key(field: str, value: Any, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Papo(_cfg(**{field: value}))


def test_annealing_needs_a_positive_gamma_and_ratio() -> None:
    with pytest.raises(ValueError, match=r"algorithm\.papo\.gamma: must be > 0"):
        Papo(_cfg(schedule="annealing", gamma=0.0))
    with pytest.raises(ValueError, match=r"algorithm\.papo\.annealing_ratio"):
        Papo(_cfg(schedule="annealing", annealing_ratio=0.0))


def test_every_papo_preset_builds() -> None:
    from rl_vlm.compose import compose

    g = compose(["algorithm=papo"]).algorithm
    assert (g.kl_coef, g.clip_high, g.papo.gamma) == (0.01, 0.3, 0.02)
    assert (g.papo.entropy_ori, g.papo.entropy_aug) == (0.05, 0.05)
    d = compose(["algorithm=papo_d"]).algorithm
    assert (d.kl_coef, d.clip_high, d.papo.gamma) == (0.0, 0.28, 0.01)
    assert (d.papo.entropy_ori, d.papo.entropy_aug) == (0.03, 0.03)
    assert isinstance(build_algorithm(g), Papo) and isinstance(build_algorithm(d), Papo)


# ----------------------------------------------------------------------------- per-token math
def test_perception_kl_is_k3_with_the_view_as_reference() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64)
    aug = torch.tensor([[-1.5, -1.0, -0.5]], dtype=F64)
    # a − ℓ = (−0.5, 1, 0): e^−0.5 + 0.5 − 1 = 0.10653066, e − 2 = 0.71828183, 0.
    expected = torch.tensor([[0.10653066, 0.71828183, 0.0]], dtype=F64)
    torch.testing.assert_close(perception_kl(logp, aug, torch.ones_like(logp)), expected, atol=1e-8, rtol=0)
    clipped = perception_kl(logp, aug, torch.ones_like(logp), clip=0.2)
    torch.testing.assert_close(clipped, torch.tensor([[0.10653066, 0.2, 0.0]], dtype=F64), atol=1e-8, rtol=0)


def test_quantile_token_mask_by_hand() -> None:
    kl = torch.tensor([[0.1, 0.5, 0.3, 0.9, 0.2, 7.0], [0.4, 0.4, 0.0, 0.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=F64)
    # Row 0: sorted valid (0.1, 0.2, 0.3, 0.5, 0.9); the 0.8-quantile sits at 0.8·4 = 3.2 ->
    # 0.5 + 0.2·(0.9 − 0.5) = 0.58. Row 1: both 0.4 -> threshold 0.4, both kept.
    torch.testing.assert_close(masked_row_quantile(kl, mask, 0.8), torch.tensor([[0.58], [0.4]], dtype=F64))
    keep = quantile_token_mask(kl, mask, 0.2)
    # Padding (7.0) passes the threshold; it is dropped later by the aggregation mask, as in the code.
    assert keep.tolist() == [[False, False, False, True, False, True], [True, True, False, False, False, False]]
    empty = masked_row_quantile(kl[:1], torch.zeros(1, 6, dtype=F64), 0.8)
    assert torch.isnan(empty).all() and not quantile_token_mask(kl[:1], torch.zeros(1, 6, dtype=F64), 0.2).any()


def test_annealed_gamma_follows_the_authors_controller() -> None:
    # total 10 steps, ratio 0.5 -> 5 annealing steps; step 1 reads the start value.
    values = [annealed_gamma(s, 10, 0.02, 0.0, 0.5) for s in range(1, 11)]
    assert values[:6] == pytest.approx([0.02, 0.016, 0.012, 0.008, 0.004, 0.0])
    assert values[6:] == [0.0] * 4
    assert annealed_gamma(1, 1, 0.02, 0.01, 0.5) == 0.02  # horizon clamps to 1 step
    assert annealed_gamma(2, 1, 0.02, 0.01, 0.5) == 0.01


# ----------------------------------------------------------------------------- the loss vs the authors
@pytest.mark.parametrize("options", [
    {},                                                         # PAPO-G 7B
    {"entropy_ori": 0.0, "entropy_aug": 0.0},                   # PAPO-G 3B
    {"kl_coef": 0.0, "clip_high": 0.28, "gamma": 0.01, "entropy_ori": 0.03, "entropy_aug": 0.03},  # PAPO-D
    {"token_mask_quantile": 0.2, "kl_clip": 0.2},
    {"schedule": "annealing", "gamma_end": 0.0},
])
def test_loss_and_gradient_match_the_authors_block(options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"kl_coef": 0.01, "clip_low": 0.2, "clip_high": 0.3, "clip_dual": 3.0, "gamma": 0.02,
                              "entropy_ori": 0.05, "entropy_aug": 0.05, **options}
    algo = Papo(_cfg(**kwargs))
    b = _random_batch()
    step, total = 3, 10
    gamma_t = algo.gamma_at(step, total)

    def ours(theta: torch.Tensor) -> torch.Tensor:
        logp = b["old"] + theta
        return algo.loss(_inputs(logp, b["old"], b["adv"], b["mask"], _views(b["aug"]), ref=b["ref"], step=step,
                                 total_steps=total)).loss

    def theirs(theta: torch.Tensor) -> torch.Tensor:
        return _authors_papo_micro_batch(
            b["old"] + theta, b["old"], b["ref"], b["aug"], b["adv"], b["mask"], clip_low=0.2,
            clip_high=kwargs["clip_high"], clip_dual=3.0, kl_coef=kwargs["kl_coef"], kl_prcp_coef_t=gamma_t,
            kl_prcp_coef=kwargs["gamma"], aug_entropy_coef=kwargs["entropy_aug"],
            ori_entropy_coef=kwargs["entropy_ori"], token_mask_top_p=kwargs.get("token_mask_quantile", 0.0),
            kl_prcp_clipping=kwargs.get("kl_clip", 0.0))

    theta = b["theta"].clone().requires_grad_(True)
    ours_loss, theirs_loss = ours(theta), theirs(theta)
    torch.testing.assert_close(ours_loss, theirs_loss, rtol=1e-7, atol=1e-9)  # their masked_mean has eps 1e-8
    g_ours, = torch.autograd.grad(ours_loss, theta)
    g_theirs, = torch.autograd.grad(theirs(theta), theta)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-7, atol=1e-9)
    if options.get("schedule") == "annealing":
        assert gamma_t == pytest.approx(0.02 * (1 - 2 / 5))


def test_micro_batch_units_match_the_authors_only_for_equal_token_counts() -> None:
    """Ours: a global token-mean over the mini-batch (summing contract). PAPO's fork: the mean of
    the micro-batches' token-means (÷ gradient accumulation). Equal iff the counts are equal."""
    algo = Papo(_cfg(kl_coef=0.0, clip_high=0.3))
    b = _random_batch(n=4)

    def both(mask: torch.Tensor) -> tuple[float, float]:
        num_tokens = float(mask.sum())
        ours, theirs = 0.0, 0.0
        for idx in ([0, 1], [2, 3]):
            logp = b["old"][idx] + b["theta"][idx]
            ours += algo.loss(_inputs(logp, b["old"][idx], b["adv"][idx], mask[idx], _views(b["aug"][idx]),
                                      num_tokens=num_tokens, num_seqs=4.0)).loss.item()
            theirs += _authors_papo_micro_batch(
                logp, b["old"][idx], None, b["aug"][idx], b["adv"][idx], mask[idx], clip_low=0.2, clip_high=0.3,
                clip_dual=3.0, kl_coef=0.0, kl_prcp_coef_t=0.02, kl_prcp_coef=0.02, aug_entropy_coef=0.05,
                ori_entropy_coef=0.05, gradient_accumulation=2).item()
        return ours, theirs

    equal = torch.zeros(4, 7, dtype=F64)
    equal[:, 1:5] = 1.0
    ours, theirs = both(equal)
    assert ours == pytest.approx(theirs, rel=1e-7)
    ours, theirs = both(b["mask"][:4])  # 5 + 2 tokens vs 7 + 3 tokens
    assert abs(ours - theirs) > 1e-4


# ----------------------------------------------------------------------------- gradients and edge cases
def test_perception_term_gradient_by_hand() -> None:
    """∂/∂ℓ [−γ k3(ℓ, a)] = −γ (1 − e^{a−ℓ}): raises ℓ where π_θ > π_mask, lowers it elsewhere."""
    gamma = 0.02
    algo = Papo(_cfg(gamma=gamma, entropy_ori=0.0, entropy_aug=0.0))
    logp = torch.tensor([[-0.5, -2.0, -1.0]], dtype=F64, requires_grad=True)
    aug = torch.tensor([[-1.5, -1.0, -1.0]], dtype=F64)
    mask = torch.ones(1, 3, dtype=F64)
    out = algo.loss(_inputs(logp, logp.detach().clone(), torch.zeros(1, 3, dtype=F64), mask, _views(aug)))
    out.loss.backward()
    expected = -gamma * (1 - torch.exp(aug - logp.detach())) / 3
    torch.testing.assert_close(logp.grad, expected)
    assert logp.grad[0, 0] < 0 < logp.grad[0, 1] and logp.grad[0, 2] == 0  # SGD raises ℓ_0, lowers ℓ_1
    kl = (math.exp(-1.0) + 1.0 - 1) + (math.exp(1.0) - 1.0 - 1)
    assert out.metrics["papo/kl_prcp"] == pytest.approx(kl / 3)
    assert out.metrics["loss"] == pytest.approx(-gamma * kl / 3)


def test_frozen_view_logprobs_get_no_gradient_by_default() -> None:
    algo = Papo(_cfg())
    logp = torch.full((1, 2), -1.0, dtype=F64, requires_grad=True)
    aug = torch.full((1, 2), -2.0, dtype=F64, requires_grad=True)  # even if the caller forgot to detach
    algo.loss(_inputs(logp, logp.detach(), torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64),
                      _views(aug))).loss.backward()
    assert aug.grad is None


def test_recompute_with_grad_trains_the_masked_branch() -> None:
    gamma, eta_aug, eta_ori = 0.02, 0.05, 0.03
    algo = Papo(_cfg(gamma=gamma, entropy_aug=eta_aug, entropy_ori=eta_ori, recompute_with_grad=True))
    logp = torch.tensor([[-0.5, -2.0]], dtype=F64, requires_grad=True)
    aug = torch.tensor([[-1.5, -1.0]], dtype=F64, requires_grad=True)
    stale = torch.full((1, 2), -9.0, dtype=F64)  # the no-grad pass must not be used in this mode
    out = algo.loss(_inputs(logp, logp.detach().clone(), torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64),
                            _views(stale, grad=aug)))
    out.loss.backward()
    e = torch.exp(aug.detach() - logp.detach())
    # k3 = e^{a−ℓ} − (a−ℓ) − 1: ∂k3/∂a = e^{a−ℓ} − 1; the aug entropy term adds −η_aug per token.
    torch.testing.assert_close(aug.grad, (-gamma * (e - 1) - eta_aug) / 2)
    torch.testing.assert_close(logp.grad, (-gamma * (1 - e) - eta_ori) / 2)


def test_text_only_samples_have_zero_perception_kl() -> None:
    """No image: the view's log-probs equal the original ones, so KL_prcp ≈ 0 and only the
    entropy terms remain (§2.5)."""
    algo = Papo(_cfg(gamma=0.02, entropy_ori=0.05, entropy_aug=0.05))
    old = torch.tensor([[-1.0, -0.2, -3.0]], dtype=F64)
    logp = old.clone().requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    out = algo.loss(_inputs(logp, old, torch.zeros(1, 3, dtype=F64), mask, _views(old.clone())))
    assert out.metrics["papo/kl_prcp"] == pytest.approx(0.0, abs=1e-12)
    assert out.metrics["papo/entropy_ori"] == pytest.approx(0.6)
    assert out.metrics["papo/entropy_aug"] == pytest.approx(0.6)
    assert out.loss.item() == pytest.approx(0.05 * 0.6 + 0.05 * 0.6)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.025, -0.025, 0.0]], dtype=F64))  # padding: 0


def test_zero_advantage_group_still_gets_the_perception_gradient() -> None:
    algo = Papo(_cfg())
    logp = torch.tensor([[-0.5, -1.0]], dtype=F64, requires_grad=True)
    out = algo.loss(_inputs(logp, logp.detach().clone(), torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64),
                            _views(torch.tensor([[-1.5, -1.2]], dtype=F64))))
    out.loss.backward()
    assert out.metrics["pg_loss"] == 0.0 and (logp.grad != 0).all()


def test_missing_view_logprobs_name_the_key() -> None:
    z = torch.zeros(1, 2)
    with pytest.raises(KeyError, match=r"views\['papo_mask'\]\.old_logprobs"):
        Papo(_cfg()).loss(_inputs(z, z, z, torch.ones(1, 2), {}))
    with pytest.raises(KeyError, match=r"views\['papo_mask'\]\.logprobs"):
        Papo(_cfg(recompute_with_grad=True)).loss(_inputs(z, z, z, torch.ones(1, 2), _views(z)))
    # The annealing schedule's step and total are typed fields: the inputs cannot lack them.
    with pytest.raises(TypeError, match="step"):
        LossInputs(logprobs=z, old_logprobs=z, ref_logprobs=None, advantages=z,  # type: ignore[call-arg]
                   response_mask=torch.ones(1, 2), entropy=None, num_tokens=2.0, num_seqs=1.0, max_response_len=8,
                   views=_views(z))


def test_advantages_unchanged_and_gamma_reported_on_the_driver() -> None:
    algo = Papo(_cfg(schedule="annealing", gamma=0.02, gamma_end=0.0, annealing_ratio=0.5))
    mask = torch.ones(4, 3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = algo.compute_advantages(rewards, 2, _ctx(mask, step=2, total_steps=10))
    grpo = build_algorithm(AlgorithmConfig()).compute_advantages(rewards, 2, _ctx(mask))
    torch.testing.assert_close(adv, grpo)
    assert algo.step_metrics()["papo/gamma"] == pytest.approx(0.016)
    assert algo.step_metrics()["papo/entropy_scale"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- summing contract
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("recompute", [False, True])
def test_loss_and_metrics_sum_over_micro_batches(mode: str, recompute: bool) -> None:
    algo = Papo(_cfg(loss_agg=mode, kl_coef=0.01, token_mask_quantile=0.2, kl_clip=0.5,
                     recompute_with_grad=recompute))
    b = _random_batch(n=7)
    theta = b["theta"].clone().requires_grad_(True)
    phi = torch.zeros_like(theta, requires_grad=True)  # the masked branch's parameters
    num_tokens, num_seqs = float(b["mask"].sum()), float((b["mask"].sum(-1) > 0).sum())

    def run(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        aug = b["aug"][idx] + phi[idx]
        views = _views(b["aug"][idx], grad=aug if recompute else None)
        out = algo.loss(_inputs(b["old"][idx] + theta[idx], b["old"][idx], b["adv"][idx], b["mask"][idx], views,
                                ref=b["ref"][idx], num_tokens=num_tokens, num_seqs=num_seqs))
        return out.loss, out.metrics

    full_loss, full_metrics = run(list(range(7)))
    params = [theta, phi] if recompute else [theta]
    full_grads = torch.autograd.grad(full_loss, params)
    total, summed = torch.zeros((), dtype=F64), dict.fromkeys(full_metrics, 0.0)
    for idx in ([0, 1], [2], [3, 4, 5, 6]):
        loss, metrics = run(idx)
        total = total + loss
        for k, v in metrics.items():
            summed[k] += v
    for g_micro, g_full in zip(torch.autograd.grad(total, params), full_grads, strict=True):
        torch.testing.assert_close(g_micro, g_full)
    torch.testing.assert_close(total, full_loss)
    for name in ("papo/kl_prcp", "papo/entropy_ori", "papo/entropy_aug", "papo/kl_prcp_kept_frac"):
        assert name in full_metrics
    for k in full_metrics:
        assert summed[k] == pytest.approx(full_metrics[k], abs=1e-10), k
    assert 0 < full_metrics["papo/kl_prcp_kept_frac"] < 1
