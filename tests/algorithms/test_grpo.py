"""The Algorithm contract with plain GRPO: registry, hooks, loss composition and the summing
contract of LossOutput (loss and metrics over micro-batches = the mini-batch values)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from rl_vlm.algorithms import (
    ALGORITHMS,
    Algorithm,
    LossInputs,
    LossTerm,
    StepContext,
    build_algorithm,
)
from rl_vlm.algorithms.core import masked_sum
from rl_vlm.config import AlgorithmConfig

F64 = torch.float64


def _ctx(mask: torch.Tensor) -> StepContext:
    """A one-unit step context over ``mask``'s N sequences (GRPO reads only the mask)."""
    n = mask.shape[0]
    return StepContext(response_mask=mask, old_logprobs=torch.zeros_like(mask), step=1, total_steps=1,
                       micro_batches=[list(range(n))], device_mini_batches=[list(range(n))],
                       branch=torch.zeros(n, dtype=torch.long))


def _inputs(logprobs: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
            ref: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
            num_tokens: float | None = None, num_seqs: float | None = None, max_len: int = 4) -> LossInputs:
    return LossInputs(
        logprobs=logprobs, old_logprobs=old, ref_logprobs=ref, advantages=adv, response_mask=mask,
        entropy=entropy,
        num_tokens=float(mask.sum()) if num_tokens is None else num_tokens,
        num_seqs=float((mask.sum(-1) > 0).sum()) if num_seqs is None else num_seqs,
        max_response_len=max_len, step=1, total_steps=1)


# ----------------------------------------------------------------------------- registry
def test_build_algorithm_default_is_grpo() -> None:
    algo = build_algorithm(AlgorithmConfig())
    assert type(algo) is Algorithm and ALGORITHMS["grpo"] is Algorithm
    assert not algo.needs_reference and not algo.needs_entropy_grad
    assert algo.views() == () and algo.step_metrics() == {}
    assert not Algorithm.has_rollout_views(AlgorithmConfig())


def test_build_algorithm_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown algorithm.name 'ppo'.*'grpo'"):
        build_algorithm(AlgorithmConfig(name="ppo"))


def test_capabilities_follow_the_coefficients() -> None:
    algo = build_algorithm(AlgorithmConfig(kl_coef=0.01, entropy_coef=0.001))
    assert algo.needs_reference and algo.needs_entropy_grad


def test_algorithm_and_rewards_import_without_the_heavy_stack() -> None:
    code = ("import sys, rl_vlm.algorithms, rl_vlm.rewards; "
            "heavy = [m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- driver-side hooks
def test_score_rollouts_is_a_no_op() -> None:
    rewards = torch.tensor([1.0, 0.0])
    out = Algorithm(AlgorithmConfig()).score_rollouts(rewards, {"accuracy": rewards}, 2, _ctx(torch.ones(2, 3)))
    assert out.rewards is rewards and out.metrics == {}


def test_compute_advantages_broadcasts_over_valid_tokens() -> None:
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = Algorithm(AlgorithmConfig()).compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, _ctx(mask))
    # Groups [1, 0] and [0, 1]: mean 0.5, unbiased std sqrt(0.5) -> ±0.5 / 0.7071068 = ±0.7071068.
    a = 0.7071068
    expected = torch.tensor([[0.0, a, a, 0.0], [0.0, 0.0, -a, -a], [-a, 0.0, 0.0, 0.0], [a, a, a, a]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)

    dr = Algorithm(AlgorithmConfig(norm_adv_by_std=False)).compute_advantages(
        torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, _ctx(mask))
    torch.testing.assert_close(dr, expected / a * 0.5, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- loss
@pytest.mark.parametrize("advantage, direction", [(1.0, 1.0), (-1.0, -1.0)])
def test_gradient_step_moves_logprob_with_the_advantage(advantage: float, direction: float) -> None:
    algo = Algorithm(AlgorithmConfig())
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0]], dtype=F64)
    out = algo.loss(_inputs(logp, logp.detach().clone(), torch.full((1, 2), advantage, dtype=F64), mask))
    out.loss.backward()
    assert logp.grad is not None
    stepped = logp.detach() - 0.1 * logp.grad  # one SGD step on the loss
    assert (stepped[0, 0] - logp[0, 0]).item() * direction > 0
    assert logp.grad[0, 1] == 0  # padding gets no gradient


def test_loss_composition_with_kl_and_entropy() -> None:
    algo = Algorithm(AlgorithmConfig(kl_coef=0.1, entropy_coef=0.01, kl_estimator="k3"))
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    ent = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=F64)
    out = algo.loss(_inputs(logp, logp.detach().clone(), torch.full((1, 2), 0.5, dtype=F64), mask, ref, ent))
    # r = 1 -> pg per token = -0.5, token-mean -0.5. k3 = (0.10653066, 0.71828183), mean 0.41240625.
    # entropy mean 1.5. loss = -0.5 + 0.1 * 0.41240625 - 0.01 * 1.5 = -0.473759375.
    assert out.loss.item() == pytest.approx(-0.473759375, abs=1e-8)
    assert out.metrics["pg_loss"] == pytest.approx(-0.5)
    assert out.metrics["kl"] == pytest.approx(0.41240625, abs=1e-8)
    assert out.metrics["entropy"] == pytest.approx(1.5)
    assert out.metrics["loss"] == pytest.approx(-0.473759375, abs=1e-8)
    assert out.metrics["clip_frac"] == 0.0 and out.metrics["ratio_mean"] == pytest.approx(1.0)
    out.loss.backward()
    # The entropy bonus pushes entropy up: d loss / d H = -0.01 / 2 tokens.
    torch.testing.assert_close(ent.grad, torch.full((1, 2), -0.005, dtype=F64))


def test_entropy_is_a_metric_only_when_its_coefficient_is_zero() -> None:
    algo = Algorithm(AlgorithmConfig())
    logp = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    out = algo.loss(_inputs(logp, logp.detach(), torch.ones(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64),
                            entropy=torch.tensor([[3.0, 5.0]], dtype=F64)))
    assert out.metrics["entropy"] == 4.0
    assert out.loss.item() == pytest.approx(-1.0)


def test_kl_coef_without_reference_logprobs_raises() -> None:
    algo = Algorithm(AlgorithmConfig(kl_coef=0.1))
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        algo.loss(_inputs(z, z, z, torch.ones(1, 2)))


def test_clip_metrics() -> None:
    algo = Algorithm(AlgorithmConfig(clip_low=0.2, clip_high=0.28, clip_dual=3.0))
    ratios = torch.tensor([[1.5, 1.0, 0.5, 5.0]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=F64)
    out = algo.loss(_inputs(ratios.log(), torch.zeros(1, 4, dtype=F64), adv, torch.ones(1, 4, dtype=F64),
                            num_tokens=8.0))
    # Clipped: r = 1.5 (A > 0, high side), r = 0.5 (A < 0, low side), r = 5 (A < 0, dual) -> 3 of
    # the mini-batch's 8 tokens; this micro-batch's ratio sum 8.0 over 8 tokens -> 1.0.
    assert out.metrics["clip_frac"] == pytest.approx(3 / 8)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 8)
    assert out.metrics["clip_frac_low"] == pytest.approx(2 / 8)
    assert out.metrics["ratio_mean"] == pytest.approx(8.0 / 8)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_loss_and_metrics_sum_over_micro_batches(mode: str) -> None:
    """The learner contract: Σ over micro-batches of loss (value and gradient) and of every
    metric equals the single-call value on the whole mini-batch."""
    cfg = AlgorithmConfig(kl_coef=0.05, entropy_coef=0.01, loss_agg=mode)  # type: ignore[arg-type]
    algo = Algorithm(cfg)
    gen = torch.Generator().manual_seed(1)
    n, width = 6, 7
    mask = torch.zeros(n, width, dtype=F64)
    for i, (start, length) in enumerate([(1, 5), (2, 2), (3, 0), (0, 7), (4, 1), (2, 3)]):
        mask[i, start: start + length] = 1.0
    theta = torch.randn(n, width, generator=gen, dtype=F64).requires_grad_(True)
    ent_param = torch.rand(n, width, generator=gen, dtype=F64).requires_grad_(True)
    old = torch.randn(n, width, generator=gen, dtype=F64) * 0.5 - 1.0
    ref = torch.randn(n, width, generator=gen, dtype=F64) * 0.5 - 1.0
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    adv = algo.compute_advantages(rewards, 3, _ctx(mask.float())).to(F64)
    num_tokens, num_seqs = float(mask.sum()), float((mask.sum(-1) > 0).sum())

    def run(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        logp = old[idx] + 0.4 * theta[idx]  # ratios spread across the clip range
        out = algo.loss(_inputs(logp, old[idx], adv[idx], mask[idx], ref[idx], 2.0 * ent_param[idx],
                                num_tokens, num_seqs, max_len=8))
        return out.loss, out.metrics

    full_loss, full_metrics = run(list(range(n)))
    full_grads = torch.autograd.grad(full_loss, [theta, ent_param])
    total = torch.zeros((), dtype=F64)
    summed: dict[str, float] = {}
    for idx in ([0], [1, 2, 3], [4, 5]):
        loss, metrics = run(idx)
        total = total + loss
        for k, v in metrics.items():
            summed[k] = summed.get(k, 0.0) + v
    micro_grads = torch.autograd.grad(total, [theta, ent_param])

    torch.testing.assert_close(total, full_loss)
    for g_micro, g_full in zip(micro_grads, full_grads, strict=True):
        torch.testing.assert_close(g_micro, g_full)
    assert summed.keys() == full_metrics.keys()
    for k in full_metrics:
        assert summed[k] == pytest.approx(full_metrics[k], abs=1e-10), k
    assert full_metrics["clip_frac"] > 0  # the test exercises clipping


# ----------------------------------------------------------------------------- loss hooks
class _Weighted(Algorithm):
    """Keeps only the first valid token of each sequence (a VPPO-style token mask)."""

    def token_weights(self, inp: LossInputs) -> torch.Tensor | None:
        first = (inp.response_mask.cumsum(-1) == 1) & (inp.response_mask > 0)
        return first.to(inp.logprobs.dtype)


class _ExtraTerm(Algorithm):
    """Adds 0.5 x token-mean of -logprob (an NLL / entropy-penalty term, as PAPO/VPPO do)."""

    def extra_loss_terms(self, inp: LossInputs) -> list[LossTerm]:
        nll = self._agg(-inp.logprobs, inp)
        return [LossTerm(name="nll", value=nll, coef=0.5,
                         metrics={"nll_tokens": masked_sum(torch.ones_like(inp.logprobs), inp.response_mask)})]


def test_token_weights_keep_the_all_token_denominator() -> None:
    logp = torch.zeros(1, 4, dtype=F64, requires_grad=True)
    inp = _inputs(logp, logp.detach(), torch.ones(1, 4, dtype=F64), torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=F64))
    out = _Weighted(AlgorithmConfig()).loss(inp)
    # Only 1 of 3 tokens keeps its -1 loss, but the token-mean still divides by 3 (VPPO TGF, §3.1).
    assert out.metrics["pg_loss"] == pytest.approx(-1 / 3)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1 / 3, 0.0, 0.0]], dtype=F64))


def test_extra_loss_terms_enter_loss_and_metrics() -> None:
    logp = torch.tensor([[-1.0, -3.0]], dtype=F64, requires_grad=True)
    inp = _inputs(logp, logp.detach(), torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64))
    out = _ExtraTerm(AlgorithmConfig()).loss(inp)
    # pg = 0 (A = 0); nll = mean(1, 3) = 2; loss = 0.5 * 2 = 1.
    assert out.metrics["nll"] == pytest.approx(2.0) and out.metrics["nll_tokens"] == 2.0
    assert out.loss.item() == pytest.approx(1.0)


def test_extra_term_name_collision_raises() -> None:
    class Bad(Algorithm):
        def extra_loss_terms(self, inp: LossInputs) -> list[LossTerm]:
            return [LossTerm(name="pg_loss", value=torch.zeros(()), coef=1.0)]

    z = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="pg_loss"):
        Bad(AlgorithmConfig()).loss(_inputs(z, z, z, torch.ones(1, 1)))


def test_bad_config_strings_are_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="loss_agg"):
        Algorithm(dataclasses.replace(AlgorithmConfig(), loss_agg="seq"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- composition
def test_invalid_compositions_fail_at_config_time_naming_the_key() -> None:
    from rl_vlm.compose import compose
    from rl_vlm.config import ConfigError
    from rl_vlm.validation import validate

    with pytest.raises(ConfigError, match=r"algorithm.name 'vppo\+vogue': vppo and vogue cannot be composed"):
        validate(compose(["algorithm=vppo", "algorithm.name=vppo+vogue"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"algorithm.name='care\+vogue'.*paper mode"):
        validate(compose(["algorithm=vogue_paper", "algorithm.name=care+vogue"]), check_paths=False)
    cfg = validate(compose(["algorithm=papo_vppo"]), check_paths=False)
    algo = build_algorithm(cfg.algorithm)
    # Both variants' masked views run (two extra forwards), one each.
    assert sorted(v.name for v in algo.views()) == ["papo_mask", "vppo_mask"]


def test_validation_checks_the_algorithm_without_building_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() asks the classes (check_config, has_rollout_views); only the controller and each
    learner build an instance."""
    from rl_vlm.compose import compose
    from rl_vlm.config import ConfigError
    from rl_vlm.validation import validate

    def no_instance(self: Algorithm, cfg: AlgorithmConfig) -> None:
        raise AssertionError("validate() built an algorithm")

    monkeypatch.setattr(Algorithm, "__init__", no_instance)
    for preset in ("grpo", "papo_vppo", "care", "vogue_paper"):
        validate(compose([f"algorithm={preset}"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"data\.dynamic_sampling"):
        validate(compose(["algorithm=vogue_paper", "data.dynamic_sampling=true"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"algorithm\.kl_coef"):
        validate(compose(["algorithm=care", "algorithm.kl_coef=0.1"]), check_paths=False)
