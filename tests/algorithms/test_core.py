"""Hand-computed checks of every formula in rl_vlm.algorithms.core (algorithms.md §1.1).

Expected numbers are written out (derivations in the comments) or come from a plain-Python
reference loop in this file, never from the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from rl_vlm.algorithms.core import (
    aggregate,
    clipped_policy_loss,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    masked_mean,
    masked_sum,
)

F64 = torch.float64


def t(*rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# ----------------------------------------------------------------------------- group advantages
def test_group_advantages_std_normalised() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 2.0, 3.0])
    adv = group_advantages(rewards, group_size=4)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.5773503 -> ±0.5 / 0.5773503 = ±0.8660254
    # group 2: mean 1.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, std 1.2909944
    #          -> (-1.5, -0.5, 0.5, 1.5) / 1.2909944 = (-1.1618950, -0.3872983, 0.3872983, 1.1618950)
    expected = torch.tensor([0.8660254, -0.8660254, -0.8660254, 0.8660254,
                             -1.1618950, -0.3872983, 0.3872983, 1.1618950])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert adv.dtype == torch.float32


def test_group_advantages_eps_enters_denominator() -> None:
    # [0, 2]: mean 1, unbiased std sqrt(2); eps = 1 -> ±1 / (1 + sqrt 2) = ±(sqrt 2 - 1) = ±0.41421356
    adv = group_advantages(torch.tensor([0.0, 2.0]), group_size=2, eps=1.0)
    torch.testing.assert_close(adv, torch.tensor([-0.41421356, 0.41421356]), atol=1e-6, rtol=0)


def test_group_advantages_zero_variance_group_is_exactly_zero() -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point, so "centred = 0" must not rely on rounding.
    rewards = torch.tensor([2.0, 2.0, 2.0, 0.1, 0.1, 0.1, 1.0, 0.0, 0.0])
    for norm in (True, False):
        adv = group_advantages(rewards, group_size=3, norm_by_std=norm)
        assert torch.equal(adv[:6], torch.zeros(6))
        assert adv[6] > 0 > adv[7]


def test_group_advantages_without_std_is_dr_grpo_centring() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 2.0, 3.0])
    adv = group_advantages(rewards, group_size=4, norm_by_std=False)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, -1.5, -0.5, 0.5, 1.5])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_group_advantages_group_of_one_is_the_reward() -> None:
    rewards = torch.tensor([0.3, -1.0, 2.0])
    for norm in (True, False):
        torch.testing.assert_close(group_advantages(rewards, group_size=1, norm_by_std=norm), rewards)


def test_group_advantages_rejects_bad_group_size() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        group_advantages(torch.zeros(6), group_size=4)


# ----------------------------------------------------------------------------- KL estimators
LOGP = t(-1.0, -2.0)
REF = t(-1.5, -1.0)


@pytest.mark.parametrize("kind, expected", [
    ("k1", [0.5, -1.0]),                      # l - l_ref
    ("k2", [0.125, 0.5]),                     # 0.5 * (l - l_ref)^2
    ("abs", [0.5, 1.0]),                      # |l - l_ref|
    # k3: d = l_ref - l = (-0.5, 1.0); exp(d) - d - 1 = (0.6065307 - 0.5, 2.7182818 - 2)
    ("k3", [0.10653066, 0.71828183]),
])
def test_kl_estimators(kind: str, expected: list[float]) -> None:
    torch.testing.assert_close(kl_estimate(LOGP, REF, kind), t(*expected), atol=1e-7, rtol=0)  # type: ignore[arg-type]


def test_k3_gradient() -> None:
    logp = LOGP.clone().requires_grad_(True)
    kl_estimate(logp, REF, "k3").sum().backward()
    # d/dl [exp(r - l) - (r - l) - 1] = 1 - exp(r - l) = (1 - e^-0.5, 1 - e^1)
    torch.testing.assert_close(logp.grad, t(0.39346934, -1.71828183), atol=1e-7, rtol=0)


def test_k3_clamps_value_and_stays_finite() -> None:
    logp = t(0.0, 0.0, 0.0, 0.0).requires_grad_(True)
    ref = t(30.0, 1000.0, -30.0, -1000.0)
    kl = kl_estimate(logp, ref, "k3")
    # d clamped to ±20: exp(20) - 21 and exp(-20) + 19 both exceed 10 -> value clamped to 10.
    torch.testing.assert_close(kl, t(10.0, 10.0, 10.0, 10.0))
    kl.sum().backward()
    # Clamped values carry no gradient, and the ±20 clamp keeps exp() from producing inf * 0 = NaN.
    assert torch.equal(logp.grad, t(0.0, 0.0, 0.0, 0.0))
    # Just below the value clamp the estimate is exact: d = 2.5 -> e^2.5 - 3.5 = 8.6824940
    torch.testing.assert_close(kl_estimate(t(0.0), t(2.5), "k3"), t(8.68249396), atol=1e-7, rtol=0)


def test_unknown_kl_kind() -> None:
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(LOGP, REF, "kl")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- clipped loss
def _loss(ratios: list[float], adv: list[float], low: float = 0.2, high: float = 0.28, dual: float = 3.0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = torch.log(t(*ratios)).requires_grad_(True)
    loss, clipped = clipped_policy_loss(logp, torch.zeros_like(logp), t(*adv), low, high, dual)
    loss.sum().backward()
    assert logp.grad is not None
    return loss.detach(), clipped, logp.grad


def test_clipped_loss_positive_advantage() -> None:
    # A = +1, eps 0.2 / 0.28. r = 1.1 inside -> -1.1; r = 1.25 inside the clip-HIGHER range
    # (clipped if it were symmetric 0.2) -> -1.25; r = 1.5 and 5 above -> -1.28, clipped, no
    # gradient; r = 0.5 below 1 - eps_low but with A > 0 the min picks the unclipped -0.5.
    loss, clipped, grad = _loss([1.1, 1.25, 1.5, 5.0, 0.5], [1.0] * 5)
    torch.testing.assert_close(loss, t(-1.1, -1.25, -1.28, -1.28, -0.5))
    torch.testing.assert_close(clipped, t(0.0, 0.0, 1.0, 1.0, 0.0))
    # dL/dl = -A * r where unclipped.
    torch.testing.assert_close(grad, t(-1.1, -1.25, 0.0, 0.0, -0.5))


def test_clip_higher_asymmetry() -> None:
    # The same r = 1.25 with a symmetric range 0.2 / 0.2 is clipped at 1.2.
    loss, clipped, grad = _loss([1.25], [1.0], high=0.2)
    torch.testing.assert_close(loss, t(-1.2))
    torch.testing.assert_close(clipped, t(1.0))
    torch.testing.assert_close(grad, t(0.0))


def test_clipped_loss_negative_advantage_and_dual_clip() -> None:
    # A = -1: r = 1.1 inside -> 1.1; r = 0.75 and 0.5 below 0.8 -> 0.8, clipped; r = 1.5 above
    # 1.28: max picks the unclipped 1.5 (pessimistic bound, gradient flows); r = 2.5 < C -> 2.5;
    # r = 5 > C = 3 -> dual clip min(5, 3) = 3, clipped. A = -2, r = 5 -> min(10, 6) = 6.
    loss, clipped, grad = _loss([1.1, 0.75, 0.5, 1.5, 2.5, 5.0, 5.0], [-1.0] * 6 + [-2.0])
    torch.testing.assert_close(loss, t(1.1, 0.8, 0.8, 1.5, 2.5, 3.0, 6.0))
    torch.testing.assert_close(clipped, t(0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0))
    torch.testing.assert_close(grad, t(1.1, 0.0, 0.0, 1.5, 2.5, 0.0, 0.0))


def test_dual_clip_disabled_and_zero_advantage() -> None:
    loss, clipped, grad = _loss([5.0, 2.0], [-1.0, 0.0], dual=0.0)
    torch.testing.assert_close(loss, t(5.0, 0.0))
    torch.testing.assert_close(clipped, t(0.0, 0.0))
    torch.testing.assert_close(grad, t(5.0, 0.0))


def test_log_ratio_is_clamped_before_exp() -> None:
    logp = t(100.0)
    loss, _ = clipped_policy_loss(logp, t(0.0), t(-1.0), 0.2, 0.28, 0.0)
    torch.testing.assert_close(loss, t(math.exp(20.0)))  # exp(100) would be inf in fp32


# ----------------------------------------------------------------------------- aggregation
VALUES = t([1.0, 2.0, 3.0, float("nan")], [4.0, 100.0, 100.0, 100.0], [float("inf"), 7.0, 7.0, 7.0])
MASK = t([1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", 2.5),               # (1 + 2 + 3 + 4) / 4 tokens
    ("seq-mean-token-mean", 3.0),      # (mean(1,2,3) + mean(4)) / 2 seqs; the empty row is not a seq
    ("seq-mean-token-sum", 5.0),       # (6 + 4) / 2
    ("seq-mean-token-sum-norm", 1.0),  # 10 / (2 seqs * max_len 5)
])
def test_aggregate_modes(mode: str, expected: float) -> None:
    out = aggregate(VALUES, MASK, mode, num_tokens=4.0, num_seqs=2.0, max_len=5)  # type: ignore[arg-type]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64))


def test_aggregate_uses_the_global_denominators_given() -> None:
    # The same micro-batch inside a mini-batch of 10 tokens / 4 sequences.
    out = aggregate(VALUES, MASK, "token-mean", num_tokens=10.0, num_seqs=4.0, max_len=5)
    torch.testing.assert_close(out, torch.tensor(1.0, dtype=F64))
    out = aggregate(VALUES, MASK, "seq-mean-token-mean", num_tokens=10.0, num_seqs=4.0, max_len=5)
    torch.testing.assert_close(out, torch.tensor(1.5, dtype=F64))


def test_aggregate_unknown_mode() -> None:
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(VALUES, MASK, "seq", 4.0, 2.0, 5)  # type: ignore[arg-type]


def _reference_aggregate(per_seq: list[list[float]], mode: str, max_len: int) -> float:
    """The §1.1 table as a plain-Python loop over the WHOLE mini-batch."""
    valid = [s for s in per_seq if s]
    n_tok = sum(len(s) for s in valid)
    if mode == "token-mean":
        return sum(sum(s) for s in valid) / n_tok
    if mode == "seq-mean-token-mean":
        return sum(sum(s) / len(s) for s in valid) / len(valid)
    if mode == "seq-mean-token-sum":
        return sum(sum(s) for s in valid) / len(valid)
    return sum(sum(s) for s in valid) / (len(valid) * max_len)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_micro_batches_with_global_denominators_sum_to_the_full_batch(mode: str) -> None:
    """Value and gradient: Σ over micro-batches (each padded to its own width, as the learner
    does, with responses after prompts of different lengths) = the whole mini-batch at once."""
    gen = torch.Generator().manual_seed(0)
    prompt_lens = [3, 1, 4, 2, 2, 5]
    resp_lens = [5, 2, 0, 7, 1, 3]  # one sequence has no valid token
    max_len = 8
    leaves = [torch.randn(r, generator=gen, dtype=F64).requires_grad_(True) for r in resp_lens]
    olds = [torch.randn(r, generator=gen, dtype=F64) * 0.3 for r in resp_lens]
    advs = [torch.full((r,), a, dtype=F64) for r, a in zip(resp_lens, [1.0, -0.5, 0.3, -2.0, 0.7, 1.5], strict=True)]

    def token_loss(i: int) -> torch.Tensor:
        logp = leaves[i] * 0.3 - 1.0
        loss, _ = clipped_policy_loss(logp, olds[i] - 1.0, advs[i], 0.2, 0.28, 3.0)
        return loss + 0.1 * kl_estimate(logp, olds[i] - 1.2, "k3")

    def collate(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(prompt_lens[i] + resp_lens[i] for i in idx) + 1  # extra right padding
        vals = torch.zeros(len(idx), width, dtype=F64)
        mask = torch.zeros(len(idx), width, dtype=F64)
        rows = []
        for row, i in enumerate(idx):
            p, r = prompt_lens[i], resp_lens[i]
            rows.append(torch.cat([torch.full((p,), 9.0, dtype=F64), token_loss(i),
                                   torch.full((width - p - r,), 9.0, dtype=F64)]))
            mask[row, p: p + r] = 1.0
        vals = vals + torch.stack(rows)
        return vals, mask

    num_tokens = float(sum(resp_lens))
    num_seqs = float(sum(r > 0 for r in resp_lens))

    def grads_of(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, [x for x in leaves if x.numel()], retain_graph=False))

    vals, mask = collate(list(range(6)))
    full = aggregate(vals, mask, mode, num_tokens, num_seqs, max_len)  # type: ignore[arg-type]
    full_grads = grads_of(full)

    micro_total = torch.zeros((), dtype=F64)
    for idx in ([0, 1], [2], [3, 4, 5]):  # uneven micro-batches, as over ranks
        v, m = collate(idx)
        micro_total = micro_total + aggregate(v, m, mode, num_tokens, num_seqs, max_len)  # type: ignore[arg-type]
    micro_grads = grads_of(micro_total)

    per_seq = [token_loss(i).tolist() for i in range(6)]
    torch.testing.assert_close(full, torch.tensor(_reference_aggregate(per_seq, mode, max_len), dtype=F64))
    torch.testing.assert_close(micro_total, full)
    for g_micro, g_full in zip(micro_grads, full_grads, strict=True):
        torch.testing.assert_close(g_micro, g_full)


# ----------------------------------------------------------------------------- helpers, entropy
def test_masked_sum_and_mean() -> None:
    torch.testing.assert_close(masked_sum(VALUES, MASK), torch.tensor(10.0, dtype=F64))
    torch.testing.assert_close(masked_sum(VALUES, MASK, dim=-1), t(6.0, 4.0, 0.0))
    torch.testing.assert_close(masked_mean(VALUES, MASK), torch.tensor(2.5, dtype=F64))
    # Empty rows give 0, not NaN.
    torch.testing.assert_close(masked_mean(VALUES, MASK, dim=-1), t(2.0, 4.0, 0.0))


def test_entropy_from_logits_values() -> None:
    logits = torch.tensor([
        [0.0, 0.0, -math.inf, -math.inf],         # two equal -> ln 2; masked entries contribute 0
        [0.0, math.log(3.0), -math.inf, -math.inf],  # p = (1/4, 3/4)
        [0.0, 0.0, 0.0, 0.0],                     # uniform over 4 -> ln 4
        [1000.0, 1000.0, -1000.0, -1000.0],       # huge logits: still ln 2
    ], dtype=F64)
    # -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.3465736 + 0.2157616 = 0.5623351
    expected = t(0.69314718, 0.56233514, 1.38629436, 0.69314718)
    torch.testing.assert_close(entropy_from_logits(logits), expected, atol=1e-7, rtol=0)


def test_entropy_from_logits_shape_and_gradient() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0), -math.inf]]], dtype=F64, requires_grad=True)
    h = entropy_from_logits(logits)
    assert h.shape == (1, 1)
    h.sum().backward()
    # dH/dz_k = -p_k (log p_k + H): p = (1/4, 3/4), H = 0.5623351
    # -> -(0.25 (-1.3862944 + 0.5623351), 0.75 (-0.2876821 + 0.5623351)) = (0.2059898, -0.2059898)
    torch.testing.assert_close(logits.grad, torch.tensor([[[0.2059898, -0.2059898, 0.0]]], dtype=F64),
                               atol=1e-7, rtol=0)
