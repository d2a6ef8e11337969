"""VPPO (algorithms.md §3): dependency, TAS, TGF, entropy penalty, statistic units, edge cases,
the PAPO+VPPO composition, and a transcription of the authors' ``dp_actor.update_policy``
(test-only) for comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rl_vlm.algorithms import (
    Algorithm,
    LossInputs,
    StepContext,
    ViewOutputs,
    build_algorithm,
)
from rl_vlm.algorithms.papo import Papo
from rl_vlm.algorithms.views import TileBlackening
from rl_vlm.algorithms.vppo import (
    VIEW,
    Vppo,
    dependency_range,
    micro_batch_scaling,
    token_dependency,
    top_fraction_mask,
    trajectory_dependency,
    trajectory_scaling,
    vppo_shape,
)
from rl_vlm.config import AlgorithmConfig, PapoConfig, VppoConfig

F64 = torch.float64
_BASE_KEYS = ("kl_coef", "clip_low", "clip_high", "clip_dual", "loss_agg")


def _cfg(**vppo: Any) -> AlgorithmConfig:
    """AlgorithmConfig(name="vppo") with the base keys above and every other key in ``vppo``."""
    base = {k: v for k, v in vppo.items() if k in _BASE_KEYS}
    return AlgorithmConfig(name="vppo", vppo=VppoConfig(**{k: v for k, v in vppo.items() if k not in base}), **base)


def _views(aug: torch.Tensor, kl: torch.Tensor | None = None) -> dict[str, ViewOutputs]:
    """VPPO's perturbed view: its no-grad log-probs ``aug`` and, for ``full_kl``, the exact ``kl``."""
    return {VIEW: ViewOutputs(old_logprobs=aug, kl=kl)}


def _ctx(mask: torch.Tensor, old: torch.Tensor | None = None, views: dict[str, ViewOutputs] | None = None,
         micro_batches: list[list[int]] | None = None,
         device_mini_batches: list[list[int]] | None = None) -> StepContext:
    """A driver-side step context; the statistic units default to one unit of all N sequences."""
    everything = [list(range(mask.shape[0]))]
    return StepContext(response_mask=mask, old_logprobs=torch.zeros_like(mask) if old is None else old, step=1,
                       total_steps=1, micro_batches=everything if micro_batches is None else micro_batches,
                       device_mini_batches=everything if device_mini_batches is None else device_mini_batches,
                       branch=torch.zeros(mask.shape[0], dtype=torch.long), views=views or {})


def _inputs(logprobs: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
            views: dict[str, ViewOutputs], num_tokens: float | None = None,
            num_seqs: float | None = None) -> LossInputs:
    return LossInputs(
        logprobs=logprobs, old_logprobs=old, ref_logprobs=None, advantages=adv, response_mask=mask, entropy=None,
        num_tokens=float(mask.sum()) if num_tokens is None else num_tokens,
        num_seqs=float((mask.sum(-1) > 0).sum()) if num_seqs is None else num_seqs,
        max_response_len=16, step=1, total_steps=1, views=views)


def _random_step(n: int = 12, width: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)
    lengths[3] = 0  # one empty response
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(F64)
    old = -torch.rand(n, width, generator=gen, dtype=F64) * 2.0
    return {
        "mask": mask, "old": old,
        "aug": old + torch.randn(n, width, generator=gen, dtype=F64) * torch.rand(n, 1, generator=gen, dtype=F64),
        "theta": torch.randn(n, width, generator=gen, dtype=F64) * 0.3,
        "rewards": torch.randint(0, 2, (n,), generator=gen).float(),
    }


# ----------------------------------------------------------------------------- the authors' code, transcribed
def _masked_mean(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return (values * mask).sum() / (mask.sum() + eps)


def _authors_pg(old: torch.Tensor, log_probs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                token_mask: torch.Tensor, low: float, high: float, dual: float) -> torch.Tensor:
    """VPPO core_algos.compute_policy_loss(..., loss_avg_mode="token", loss_token_mask)."""
    neg = torch.clamp(log_probs - old, -20.0, 20.0)
    ratio = torch.exp(neg)
    clipped_ratio = torch.exp(torch.clamp(neg, math.log(1.0 - low), math.log(1.0 + high)))
    l1, l2, l3 = -adv * ratio, -adv * clipped_ratio, -adv * dual
    higher = torch.max(l1, l2)
    final = torch.where(adv < 0, torch.min(higher, l3), higher)
    return _masked_mean(final * token_mask.detach(), mask)


def _authors_low_var_kl(aug: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    diff = (aug - old).clamp(-20.0, 20.0)
    return torch.clamp(diff.exp() - diff - 1, min=0.0, max=10.0)


def _authors_vppo_mini_batch(log_probs: torch.Tensor, old: torch.Tensor, aug: torch.Tensor, adv: torch.Tensor,
                             mask: torch.Tensor, micro_size: int, top_p: float, beta_min: float,
                             entropy_coef: float, low: float = 0.2, high: float = 0.28, dual: float = 3.0
                             ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """VPPO ``dp_actor.update_policy`` (L262–580) for one mini-batch on one rank (world size 1):
    the summed micro-batch losses, and per micro-batch the scaled advantages and the TGF mask."""
    total_response_tokens = mask.sum()
    global_min, global_max = None, None
    mb_kl = _authors_low_var_kl(aug, old)
    n_valid = mask.sum(dim=1)
    scores = (mb_kl * mask).sum(dim=1) / torch.clamp(n_valid, min=1)
    valid_scores = scores[n_valid > 0]
    if valid_scores.numel() > 1:
        global_min, global_max = torch.quantile(valid_scores, 0.0), torch.quantile(valid_scores, 1.0)
    total, advs, masks = torch.zeros((), dtype=log_probs.dtype), [], []
    for start in range(0, mask.shape[0], micro_size):
        sl = slice(start, start + micro_size)
        m, o, a, lp, adv_mb = mask[sl], old[sl], aug[sl], log_probs[sl], adv[sl]
        low_var_kl = _authors_low_var_kl(a, o)
        for_sort = low_var_kl.clone()
        for_sort[~m.bool()] = -torch.inf
        k = torch.ceil(m.sum(dim=1) * top_p).int()
        _, sorted_indices = torch.sort(for_sort, dim=1, descending=True)
        rank_mask = torch.arange(for_sort.size(1)).expand_as(for_sort) < k.unsqueeze(1)
        top_p_mask = torch.zeros_like(for_sort, dtype=torch.bool)
        top_p_mask.scatter_(1, sorted_indices, rank_mask)
        top_p_mask = (top_p_mask & m.bool()).to(lp.dtype)
        nv = m.sum(dim=1)
        sensitivity = (low_var_kl * m).sum(dim=1) / torch.clamp(nv, min=1)
        scaling = torch.ones_like(sensitivity)
        if global_min is not None and global_max is not None and (global_max - global_min) > 1e-6:
            vm = nv > 0
            normalized = torch.clamp((sensitivity[vm] - global_min) / (global_max - global_min), 0.0, 1.0)
            target_max = beta_min + (1.0 - beta_min) / (normalized.mean() + 1e-8)
            scaling[vm] = beta_min + normalized * (target_max - beta_min)
        adv_mb = adv_mb * scaling.unsqueeze(1)
        loss = _authors_pg(o, lp, adv_mb, m, top_p_mask, low, high, dual)
        loss = loss + (-_masked_mean(lp, m)) * entropy_coef
        total = total + loss * m.sum() * 1 / total_response_tokens
        advs.append(adv_mb)
        masks.append(top_p_mask)
    return total, advs, masks


# ----------------------------------------------------------------------------- registry, view, validation
def test_registry_and_view() -> None:
    algo = build_algorithm(AlgorithmConfig(name="vppo"))
    assert type(algo) is Vppo and not algo.needs_reference and not algo.needs_entropy_grad
    (view,) = algo.views()
    assert view.name == "vppo_mask" and view.per_response and not view.with_grad and not view.full_kl
    assert view.transform == TileBlackening(patch_size=14, prob=0.5)
    (kl_view,) = Vppo(_cfg(dependency="full_kl")).views()
    assert kl_view.full_kl


@pytest.mark.parametrize("field, value, key", [
    ("mask_prob", -0.5, "algorithm.vppo.mask_prob"),
    ("patch_size", 0, "algorithm.vppo.patch_size"),
    ("dependency", "kl", "algorithm.vppo.dependency"),
    ("beta_min", 1.5, "algorithm.vppo.beta_min"),
    ("beta_min", -0.1, "algorithm.vppo.beta_min"),
    ("top_p_tokens", 0.0, "algorithm.vppo.top_p_tokens"),
    ("top_p_tokens", 1.2, "algorithm.vppo.top_p_tokens"),
    ("entropy_penalty", -0.06, "algorithm.vppo.entropy_penalty"),
    ("stats_scope", "device", "algorithm.vppo.stats_scope"),
])
def test_bad_values_name_the_key(field: str, value: Any, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Vppo(_cfg(**{field: value}))


def test_presets_build() -> None:
    from rl_vlm.compose import compose

    v = compose(["algorithm=vppo"]).algorithm
    assert (v.kl_coef, v.clip_high) == (0.0, 0.28)
    assert (v.vppo.top_p_tokens, v.vppo.beta_min, v.vppo.entropy_penalty) == (0.4, 0.9, 0.06)
    assert type(build_algorithm(v)) is Vppo
    pv = build_algorithm(compose(["algorithm=papo_vppo"]).algorithm)
    assert isinstance(pv, Papo) and isinstance(pv, Vppo)


# ----------------------------------------------------------------------------- per-token / per-sequence math
def test_token_dependency_by_hand() -> None:
    old = torch.zeros(1, 5, dtype=F64)
    aug = torch.tensor([[0.0, -1.0, 1.0, 30.0, -30.0]], dtype=F64)
    # e^d − d − 1 for d = 0, −1, 1; d = ±30 clamps to ±20, and the value (e^20 − 21 or 19) to 10.
    expected = torch.tensor([[0.0, math.exp(-1.0), math.e - 2.0, 10.0, 10.0]], dtype=F64)
    torch.testing.assert_close(token_dependency(old, aug), expected)
    assert token_dependency(old[:, :1], torch.full((1, 1), -1e-12, dtype=F64)).item() >= 0.0  # never negative


def test_trajectory_dependency_ignores_padding_and_empty_rows() -> None:
    dep = torch.tensor([[1.0, 3.0, 100.0], [5.0, 5.0, 5.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(trajectory_dependency(dep, mask), torch.tensor([2.0, 0.0], dtype=F64))


def test_top_fraction_mask_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2, 9.0],
                           [0.3, 0.3, 0.3, 0.0, 0.0, 0.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=F64)
    keep = top_fraction_mask(scores, mask, 0.4)
    # Row 0: k = ceil(0.4·5) = 2 -> 0.9 and 0.7; the padded 9.0 is never picked.
    # Row 1: k = ceil(1.2) = 2 of three ties -> the first two positions. Row 2: empty, k = 0.
    assert keep.tolist() == [[False, True, False, True, False, False],
                             [True, True, False, False, False, False],
                             [False] * 6]
    assert top_fraction_mask(scores, mask, 1.0).tolist() == mask.bool().tolist()


def test_top_k_count_uses_fp32_like_the_authors() -> None:
    # 10 · 0.7 = 7.000000000000001 in fp64 (ceil 8) but exactly 7 in fp32, as the code computes it.
    mask = torch.ones(1, 10, dtype=F64)
    assert int(top_fraction_mask(torch.rand(1, 10, dtype=F64), mask, 0.7).sum()) == 7


def test_micro_batch_scaling_by_hand() -> None:
    seq = torch.tensor([0.1, 0.3, 0.5, 0.2], dtype=F64)
    valid = torch.tensor([True, True, True, False])
    alpha = micro_batch_scaling(seq, valid, dependency_range(seq, valid), beta_min=0.9)
    # lo 0.1, hi 0.5 -> n = (0, 0.5, 1); μ = 0.5; β_max = 0.9 + 0.1/0.5 = 1.1; α = 0.9 + n·0.2.
    torch.testing.assert_close(alpha, torch.tensor([0.9, 1.0, 1.1, 1.0], dtype=F64), atol=1e-7, rtol=0)


def test_alpha_is_mean_preserving_over_each_micro_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        seq = torch.rand(16, generator=gen, dtype=F64) * 2
        valid = torch.rand(16, generator=gen) > 0.2
        # lo/hi from a larger enclosing unit; μ over this unit only.
        bounds = (seq[valid].min() - 0.1, seq[valid].max() + 0.1)
        alpha = micro_batch_scaling(seq, valid, bounds, beta_min=float(torch.rand((), generator=gen)))
        assert alpha[valid].mean().item() == pytest.approx(1.0, abs=1e-7)
        assert (alpha[~valid] == 1).all()


def test_degenerate_ranges_give_alpha_one() -> None:
    valid = torch.tensor([True, False, False])
    seq = torch.tensor([0.7, 0.0, 0.0], dtype=F64)
    assert dependency_range(seq, valid) is None  # a single valid sequence
    assert (micro_batch_scaling(seq, valid, None, 0.9) == 1).all()
    flat = torch.tensor([0.5, 0.5 + 5e-7, 0.5], dtype=F64)
    all_valid = torch.ones(3, dtype=torch.bool)
    assert (micro_batch_scaling(flat, all_valid, dependency_range(flat, all_valid), 0.9) == 1).all()
    assert (micro_batch_scaling(seq, torch.zeros(3, dtype=torch.bool), (torch.tensor(0.0), torch.tensor(1.0)), 0.9)
            == 1).all()


def test_all_zero_normalised_scores_do_not_blow_up() -> None:
    """μ ≈ 0 (every n_i = 0 in the micro-batch) makes β_max huge, but α_i = β_min (§3.5)."""
    seq = torch.tensor([0.0, 0.0], dtype=F64)
    alpha = micro_batch_scaling(seq, torch.ones(2, dtype=torch.bool), (torch.tensor(0.0), torch.tensor(1.0)), 0.9)
    torch.testing.assert_close(alpha, torch.tensor([0.9, 0.9], dtype=F64))


def test_units_are_checked() -> None:
    seq, valid = torch.rand(4, dtype=F64), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="one device mini-batch"):
        trajectory_scaling(seq, valid, 0.9, [[0, 2], [1, 3]], [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="both"):
        trajectory_scaling(seq, valid, 0.9, [[0, 1, 2, 3]], None)
    with pytest.raises(ValueError, match="out of range"):
        trajectory_scaling(seq, valid, 0.9, [[0, 4]], [[0, 4]])


# ----------------------------------------------------------------------------- vs the authors
@pytest.mark.parametrize("micro_size", [2, 3, 6])
def test_shaping_filtering_and_loss_match_the_authors(micro_size: int) -> None:
    b = _random_step(n=12)
    algo = Vppo(_cfg())
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(micro_size)).tolist()
    device_mini_batches = [perm[:6], perm[6:]]  # e.g. two ranks, after balancing
    micro_batches = [unit[i:i + micro_size] for unit in device_mini_batches for i in range(0, 6, micro_size)]
    ctx = _ctx(b["mask"], b["old"], _views(b["aug"]), micro_batches, device_mini_batches)
    base_adv = Algorithm(_cfg()).compute_advantages(b["rewards"], 3, _ctx(b["mask"])).to(F64)
    shaped = algo.compute_advantages(b["rewards"], 3, ctx).to(F64)

    theta = b["theta"].clone().requires_grad_(True)
    for unit in device_mini_batches:
        ref_loss, ref_advs, ref_masks = _authors_vppo_mini_batch(
            b["old"][unit] + theta[unit], b["old"][unit], b["aug"][unit], base_adv[unit], b["mask"][unit],
            micro_size, top_p=0.4, beta_min=0.9, entropy_coef=0.06)
        torch.testing.assert_close(shaped[unit], torch.cat(ref_advs).to(shaped.dtype), rtol=1e-6, atol=1e-7)
        num_tokens = float(b["mask"][unit].sum())
        ours_loss = torch.zeros((), dtype=F64)
        for j, start in enumerate(range(0, 6, micro_size)):
            idx = unit[start:start + micro_size]
            inp = _inputs(b["old"][idx] + theta[idx], b["old"][idx], shaped[idx], b["mask"][idx],
                          _views(b["aug"][idx]), num_tokens=num_tokens)
            assert algo.token_weights(inp).tolist() == ref_masks[j].tolist()  # type: ignore[union-attr]
            ours_loss = ours_loss + algo.loss(inp).loss
        torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-6, atol=1e-8)
        g_ours, = torch.autograd.grad(ours_loss, theta)
        g_ref, = torch.autograd.grad(ref_loss, theta)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9)


def test_vppo_shape_matches_the_authors_micro_batch() -> None:
    b = _random_step(n=8)
    adv = torch.randn(8, 1, dtype=F64).expand(8, 9) * b["mask"]
    _, ref_advs, ref_masks = _authors_vppo_mini_batch(b["old"], b["old"], b["aug"], adv, b["mask"], 4, 0.4, 0.9, 0.0)
    for j, sl in enumerate((slice(0, 4), slice(4, 8))):
        shaped, keep = vppo_shape(b["old"][sl], b["aug"][sl], adv[sl], b["mask"][sl], b["old"], b["aug"], b["mask"],
                                  0.4, 0.9)
        torch.testing.assert_close(shaped, ref_advs[j])
        torch.testing.assert_close(keep, ref_masks[j])


# ----------------------------------------------------------------------------- driver side: TAS
def test_global_scope_needs_no_units_and_micro_scope_does() -> None:
    b = _random_step()
    # Units no valid partition has: the global scope must not read them, the micro scope must.
    ctx = _ctx(b["mask"], b["old"], _views(b["aug"]), micro_batches=[[0, 11]], device_mini_batches=[[0], [11]])
    adv = Vppo(_cfg(stats_scope="global")).compute_advantages(b["rewards"], 3, ctx)
    seq = trajectory_dependency(token_dependency(b["old"], b["aug"]), b["mask"])
    valid = b["mask"].sum(-1) > 0
    alpha = trajectory_scaling(seq, valid, 0.9)
    base = Algorithm(_cfg()).compute_advantages(b["rewards"], 3, _ctx(b["mask"]))
    torch.testing.assert_close(adv, base * alpha.float()[:, None])
    assert alpha[valid].mean().item() == pytest.approx(1.0, abs=1e-7)
    with pytest.raises(ValueError, match="one device mini-batch"):
        Vppo(_cfg()).compute_advantages(b["rewards"], 3, ctx)
    # The units are a typed field of the step context: it cannot lack them.
    with pytest.raises(TypeError, match="micro_batches"):
        StepContext(response_mask=b["mask"], old_logprobs=b["old"], step=1, total_steps=1,  # type: ignore[call-arg]
                    device_mini_batches=[[0]], branch=torch.zeros(12, dtype=torch.long))


def test_zero_variance_groups_and_empty_responses() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.float32)
    old = torch.zeros(6, 3)
    aug = torch.tensor([[-0.1] * 3, [-2.0] * 3, [-5.0] * 3, [-1.0] * 3, [-0.3] * 3, [-0.6] * 3])
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # group 0 is constant -> A = 0
    algo = Vppo(_cfg(stats_scope="global"))
    adv = algo.compute_advantages(rewards, 3, _ctx(mask, old, _views(aug)))
    assert (adv[:3] == 0).all()  # a zero-advantage group stays zero
    seq = trajectory_dependency(token_dependency(old, aug), mask)
    assert seq[2] == 0
    alpha = trajectory_scaling(seq, mask.sum(-1) > 0, 0.9)
    assert alpha[2] == 1.0
    # The empty response is left out of lo/hi/μ: dropping it changes no other α.
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(alpha[keep], trajectory_scaling(seq[keep], torch.ones(5, dtype=torch.bool), 0.9))
    assert algo.step_metrics()["vppo/alpha_mean"] == pytest.approx(1.0, abs=1e-6)
    assert algo.step_metrics()["vppo/alpha_min"] == pytest.approx(0.9, abs=1e-6)
    assert algo.step_metrics()["vppo/alpha_max"] > 1.0


def test_shaping_off_leaves_the_advantages() -> None:
    b = _random_step()
    algo = Vppo(_cfg(advantage_shaping=False))
    adv = algo.compute_advantages(b["rewards"], 3, _ctx(b["mask"]))
    torch.testing.assert_close(adv, Algorithm(_cfg()).compute_advantages(b["rewards"], 3, _ctx(b["mask"])))
    assert algo.step_metrics() == {}


def test_full_kl_dependency_on_both_sides() -> None:
    b = _random_step()
    kl = torch.rand(12, 9, dtype=F64)
    algo = Vppo(_cfg(dependency="full_kl", stats_scope="global"))
    nan = torch.full_like(kl, float("nan"))  # no log-probs needed: NaN ones would show
    adv = algo.compute_advantages(b["rewards"], 3, _ctx(b["mask"], nan, _views(nan, kl=kl)))
    alpha = trajectory_scaling(trajectory_dependency(kl, b["mask"]), b["mask"].sum(-1) > 0, 0.9)
    base = Algorithm(_cfg()).compute_advantages(b["rewards"], 3, _ctx(b["mask"]))
    torch.testing.assert_close(adv, base * alpha.float()[:, None])
    inp = _inputs(b["old"], b["old"], adv.to(F64), b["mask"], _views(nan, kl=kl))
    weights = algo.token_weights(inp)
    assert weights is not None and weights.bool().tolist() == top_fraction_mask(kl, b["mask"], 0.4).tolist()
    with pytest.raises(KeyError, match=r"views\['vppo_mask'\]\.kl"):
        algo.token_weights(_inputs(b["old"], b["old"], adv.to(F64), b["mask"], _views(b["aug"])))


# ----------------------------------------------------------------------------- learner side: TGF and the loss
def test_filtered_tokens_get_zero_gradient_and_the_denominator_keeps_them() -> None:
    algo = Vppo(_cfg(entropy_penalty=0.0))
    old = torch.zeros(1, 6, dtype=F64)
    aug = torch.tensor([[-0.1, -2.0, -0.3, -1.0, -0.2, -3.0]], dtype=F64)  # dependency order: 1, 3, 2, 4, 0
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=F64)
    logp = old.clone().requires_grad_(True)
    out = algo.loss(_inputs(logp, old, torch.ones(1, 6, dtype=F64) * mask, mask, _views(aug)))
    # k = ceil(0.4·5) = 2 kept (positions 1 and 3), r = 1, A = 1: pg = −2/5, not −2/2.
    assert out.metrics["pg_loss"] == pytest.approx(-2 / 5)
    assert out.metrics["vppo/kept_frac"] == pytest.approx(2 / 5)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.2, 0.0, -0.2, 0.0, 0.0]], dtype=F64))


def test_entropy_penalty_reaches_every_valid_token() -> None:
    algo = Vppo(_cfg(entropy_penalty=0.06))
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=F64)
    logp = old.clone().requires_grad_(True)
    out = algo.loss(_inputs(logp, old, torch.zeros(1, 4, dtype=F64), mask, _views(old - 1.0)))
    assert out.metrics["vppo/entropy_penalty"] == pytest.approx(3.5 / 3)
    assert out.loss.item() == pytest.approx(0.06 * 3.5 / 3)
    assert out.metrics["vppo/dependency_mean"] == pytest.approx(math.exp(-1.0))  # d = −1 on every token
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.02, -0.02, -0.02, 0.0]], dtype=F64))


def test_filtering_off_keeps_every_token() -> None:
    algo = Vppo(_cfg(token_filtering=False))
    z = torch.zeros(2, 3, dtype=F64)
    inp = _inputs(z, z, z, torch.ones(2, 3, dtype=F64), _views(z - 0.5))
    assert algo.token_weights(inp) is None
    assert algo.loss(inp).metrics["vppo/kept_frac"] == 1.0


def test_missing_view_logprobs_name_the_key() -> None:
    z = torch.zeros(1, 2)
    with pytest.raises(KeyError, match=r"views\['vppo_mask'\]\.old_logprobs"):
        Vppo(_cfg()).loss(_inputs(z, z, z, torch.ones(1, 2), {}))
    with pytest.raises(KeyError, match=r"views\['vppo_mask'\]\.old_logprobs"):
        Vppo(_cfg(stats_scope="global")).compute_advantages(torch.zeros(2), 2, _ctx(torch.ones(2, 2)))
    # The driver-side old log-probs are a typed field of the step context: it cannot lack them.
    with pytest.raises(TypeError, match="'old_logprobs'"):
        StepContext(response_mask=torch.ones(2, 2), step=1, total_steps=1,  # type: ignore[call-arg]
                    micro_batches=[[0, 1]], device_mini_batches=[[0, 1]], branch=torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_loss_and_metrics_sum_over_micro_batches(mode: str) -> None:
    algo = Vppo(_cfg(loss_agg=mode))
    b = _random_step(n=7)
    adv = torch.randn(7, 1, dtype=F64).expand(7, 9) * b["mask"]
    theta = b["theta"].clone().requires_grad_(True)
    num_tokens, num_seqs = float(b["mask"].sum()), float((b["mask"].sum(-1) > 0).sum())

    def run(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        out = algo.loss(_inputs(b["old"][idx] + theta[idx], b["old"][idx], adv[idx], b["mask"][idx],
                                _views(b["aug"][idx]), num_tokens, num_seqs))
        return out.loss, out.metrics

    full_loss, full_metrics = run(list(range(7)))
    full_grad, = torch.autograd.grad(full_loss, theta)
    total, summed = torch.zeros((), dtype=F64), dict.fromkeys(full_metrics, 0.0)
    for idx in ([0, 1, 2], [3], [4, 5, 6]):
        loss, metrics = run(idx)
        total = total + loss
        for k, v in metrics.items():
            summed[k] += v
    torch.testing.assert_close(torch.autograd.grad(total, theta)[0], full_grad)
    torch.testing.assert_close(total, full_loss)
    for k in full_metrics:
        assert summed[k] == pytest.approx(full_metrics[k], abs=1e-10), k
    assert 0.4 <= full_metrics["vppo/kept_frac"] < 0.7


# ----------------------------------------------------------------------------- composition with PAPO
def test_papo_plus_vppo_combines_every_hook() -> None:
    cfg = AlgorithmConfig(name="papo+vppo", papo=PapoConfig(gamma=0.02, entropy_ori=0.05, entropy_aug=0.05),
                          vppo=VppoConfig(stats_scope="global"))
    both = build_algorithm(cfg)
    vppo = Vppo(AlgorithmConfig(name="vppo", vppo=VppoConfig(stats_scope="global")))
    papo = Papo(AlgorithmConfig(name="papo", papo=cfg.papo))
    views = {v.name: v for v in both.views()}
    assert views["papo_mask"].transform == TileBlackening(prob=0.6) and not views["papo_mask"].per_response
    assert views["vppo_mask"].transform == TileBlackening(prob=0.5) and views["vppo_mask"].per_response

    b = _random_step()
    views = {**_views(b["aug"]), "papo_mask": ViewOutputs(old_logprobs=b["aug"] - 0.2)}
    ctx = _ctx(b["mask"], b["old"], views)
    adv = both.compute_advantages(b["rewards"], 3, ctx)
    torch.testing.assert_close(adv, vppo.compute_advantages(b["rewards"], 3, ctx))
    assert {"papo/gamma", "vppo/alpha_mean"} <= set(both.step_metrics())
    # The composed metrics are each parent's, merged (VPPO's first: PAPO's hook wraps it).
    assert both.step_metrics() == {**vppo.step_metrics(), "papo/gamma": 0.02, "papo/entropy_scale": 1.0}

    logp = b["old"] + b["theta"]
    inp = _inputs(logp, b["old"], adv.to(F64), b["mask"], views)
    assert both.token_weights(inp).tolist() == vppo.token_weights(inp).tolist()  # type: ignore[union-attr]
    out, out_v, out_p = both.loss(inp), vppo.loss(inp), papo.loss(inp)
    papo_extra = out_p.metrics["loss"] - out_p.metrics["pg_loss"]
    assert out.metrics["loss"] == pytest.approx(out_v.metrics["loss"] + papo_extra, abs=1e-12)
    for key in ("papo/kl_prcp", "papo/entropy_ori", "papo/entropy_aug", "vppo/entropy_penalty", "vppo/kept_frac",
                "vppo/dependency_mean"):
        assert key in out.metrics
