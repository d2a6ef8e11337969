"""GRPO-CARE: Consistency-Aware Reinforcement Learning (arXiv 2506.16141), algorithms.md §4.

Delta from GRPO (§4.1). Before advantages, each response gets a consistency bonus

    R_i = r_i + λ · acc_i · 1[i ∈ H ∩ C]

where, within a statistics unit U (a prompt group by default):

- c_i = min(exp(Σ_{t∈ans} ℓ_φ,t / (|ans| + 1e-6)), ub): the geometric-mean probability of the
  answer tokens under a slowly updated EMA copy φ of the policy, teacher-forced on the sampled
  reasoning (empty span: c = exp(0) = 1 → ub);
- H = {i ∈ U : acc_i > 0.1 and acc_i ≥ mean_U acc} (high-accuracy set);
- c̄ = mean_{i∈H} c_i and C = {i ∈ U : c_i ≥ c̄ − margin}; an empty H gives no bonus.

Advantages are plain GRPO on R (the authors use ε = 1e-4: ``adv_eps`` in
``configs/algorithm/care.yaml``). There is no KL to a fixed reference (``--beta 0``): the EMA
model is only scored, so ``algorithm.kl_coef > 0`` is rejected.

Porting decisions (§4.4, §9.10–11):

- Statistics are per prompt group (``care.group_scope="group"``); the code's per-GPU-batch
  statistics are ``group_scope="device"`` over the driver's ``device_mini_batches``. The two
  agree at one prompt per device, the authors' released setting.
- The answer span comes from the framework's ``ctx.answer_mask`` (the tokens strictly inside the last
  ``<answer>…</answer>``), not the code's Qwen-tokenisation heuristic (``eos_idx − 3``).
- Means are taken in float64, so equal values are never split by float32 rounding (the code's
  float32 mean of, e.g., six accuracies of 0.9 exceeds 0.9 and empties H). Elsewhere the
  result is the code's.

Knobs: :class:`~rl_vlm.algorithms.care_config.CareConfig` (``algorithm.care.*``). The pure
functions :func:`answer_confidence` and :func:`consistency_bonus` need torch only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from rl_vlm.algorithms.base import Algorithm, EmaSpec, RolloutScores
from rl_vlm.algorithms.care_config import CareConfig
from rl_vlm.algorithms.core import masked_sum
from rl_vlm.errors import ConfigError

if TYPE_CHECKING:
    from rl_vlm.algorithms.context import StepContext
    from rl_vlm.config import AlgorithmConfig

# §4.1 step 3: the code divides the span log-likelihood by |ans| + 1e-6, so an empty span gives
# exp(0) = 1 (then the upper bound) rather than NaN.
SPAN_EPS = 1e-6


class CareBonus(NamedTuple):
    """What :func:`consistency_bonus` returns; every field is ``[N]``."""

    bonus: torch.Tensor
    """λ·acc_i·1[i ∈ H ∩ C], float64."""
    high_accuracy: torch.Tensor
    """bool, i ∈ H."""
    consistent: torch.Tensor
    """bool, i ∈ C (c_i ≥ c̄ − margin of its unit; False everywhere in a unit with empty H)."""


def answer_confidence(ema_logprobs: torch.Tensor, answer_mask: torch.Tensor,
                      upper_bound: float | None = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference confidence of each response's answer, algorithms.md §4.1 step 3.

    c_i = exp(Σ_t ℓ_φ,i,t · a_i,t / (Σ_t a_i,t + 1e-6)), then c_i ← min(c_i, upper_bound).

    Args:
        ema_logprobs: ``[N, L]`` log π_φ of each response token under the EMA reference
            (values off the answer span are ignored, even if inf/NaN).
        answer_mask: ``[N, L]`` 1 on the answer-span tokens.
        upper_bound: the clamp ``confidence_upper_bound``; None = no clamp.

    Returns:
        ``(confidence, raw)``, both ``[N]`` float64: the clamped c_i that enters c̄, and the
        unclamped value. An empty span gives raw 1 and confidence ``upper_bound``.
    """
    mask = answer_mask.to(torch.float64)
    total = masked_sum(ema_logprobs.detach().to(torch.float64), mask, dim=-1)
    raw = torch.exp(total / (mask.sum(dim=-1) + SPAN_EPS))
    conf = raw if upper_bound is None else raw.clamp(max=upper_bound)
    return conf, raw


def consistency_bonus(accuracy: torch.Tensor, confidence: torch.Tensor, units: Sequence[Sequence[int]],
                      bonus_coef: float = 0.5, margin: float = 0.0,
                      accuracy_threshold: float = 0.1) -> CareBonus:
    """The CARE consistency bonus, algorithms.md §4.1 steps 4–6, with statistics per unit.

    For each unit U (a list of sequence indices: a prompt group, or one device's batch):
    H = {i ∈ U : acc_i > threshold and acc_i ≥ mean_U acc}, c̄ = mean_H c,
    C = {i ∈ U : c_i ≥ c̄ − margin}, bonus_i = λ·acc_i·1[i ∈ H ∩ C]. An empty H gives no
    bonus in U (the code's NaN c̄ makes every comparison False).

    Args:
        accuracy: ``[N]`` acc_i (the accuracy sub-score).
        confidence: ``[N]`` c_i, already clamped (:func:`answer_confidence`).
        units: a partition of range(N) into statistics units; each index exactly once.
        bonus_coef: λ.
        margin: the consistency margin (0 = the code's None).
        accuracy_threshold: the 0.1 of H.

    Returns:
        :class:`CareBonus` of ``[N]`` tensors on ``accuracy``'s device.
    """
    acc = accuracy.detach().to(torch.float64)
    conf = confidence.detach().to(device=acc.device, dtype=torch.float64)
    n = acc.shape[0]
    if acc.dim() != 1 or conf.shape != acc.shape:
        raise ValueError(f"accuracy {tuple(accuracy.shape)} and confidence {tuple(confidence.shape)} must both be [N]")
    unit_id = torch.full((n,), -1, dtype=torch.long, device=acc.device)
    for u, members in enumerate(units):
        idx = torch.as_tensor(list(members), dtype=torch.long, device=acc.device)
        if idx.numel() and (unit_id[idx] != -1).any():
            raise ValueError("CARE statistics units overlap: a sequence index appears twice")
        unit_id[idx] = u
    if (unit_id < 0).any():
        raise ValueError(f"CARE statistics units do not cover all {n} sequences")
    num_units = len(units)

    def unit_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_units, dtype=torch.float64, device=acc.device).index_add_(0, unit_id, values)

    counts = unit_sum(torch.ones_like(acc))
    acc_mean = unit_sum(acc) / counts.clamp_min(1.0)
    # The threshold is compared in the accuracy's own dtype, like the code (0.1 in float32 is
    # not > 0.1 there, but its float64 widening would be).
    above = (accuracy.detach() > accuracy_threshold).to(acc.device)
    high = above & (acc >= acc_mean[unit_id])
    high_f = high.to(torch.float64)
    high_count = unit_sum(high_f)
    conf_bar = unit_sum(conf * high_f) / high_count.clamp_min(1.0)
    consistent = (conf >= conf_bar[unit_id] - margin) & (high_count[unit_id] > 0)
    bonus = torch.where(high & consistent, bonus_coef * acc, torch.zeros_like(acc))
    return CareBonus(bonus=bonus, high_accuracy=high, consistent=consistent)


def group_units(num_seqs: int, group_size: int) -> list[list[int]]:
    """The prompt groups of a group-major batch as statistics units: [[0..G−1], [G..2G−1], …]."""
    if group_size < 1 or num_seqs % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {num_seqs} sequences")
    return [list(range(s, s + group_size)) for s in range(0, num_seqs, group_size)]


class Care(Algorithm):
    """GRPO-CARE (§4): GRPO on rewards plus the EMA-consistency bonus of :func:`consistency_bonus`.

    Hooks: :meth:`ema_reference` (the learners keep φ), :attr:`needs_answer_span`, and
    :meth:`score_rollouts` (chained after ``super()``'s, adding the bonus to its rewards). The
    advantage and the loss are the base class's (``adv_eps`` 1e-4 and seq-mean-token-mean in
    ``care.yaml``, as in the authors' trainer).

    Step context read: ``ctx.ema_logprobs`` and ``ctx.answer_mask`` ``[N, L]``; with
    ``group_scope="device"`` also ``ctx.device_mini_batches``. Metrics (in
    :attr:`RolloutScores.metrics`): ``care/bonus_rate`` (share of responses bonused),
    ``care/consistency_rate`` (share of H that is in C; 0 when H is empty everywhere),
    ``care/high_accuracy_rate`` (|H|/N), ``care/confidence_mean`` (mean clamped c_i),
    ``care/bonus_mean`` (mean bonus, the code's ``rewards/bonus_rewards``).
    """

    @classmethod
    def check_config(cls, cfg: AlgorithmConfig) -> None:
        """No KL to a fixed reference (the care sub-config validated itself when built)."""
        super().check_config(cfg)
        if cfg.kl_coef > 0:
            raise ConfigError(f"algorithm.kl_coef: GRPO-CARE has no KL to a fixed reference (the authors run "
                              f"--beta 0; the EMA model only scores answers, §4.1), got {cfg.kl_coef}; set "
                              "algorithm.kl_coef=0")

    # ------------------------------------------------------------------ capabilities
    def ema_reference(self) -> EmaSpec | None:
        """φ ← decay·φ + (1 − decay)·θ after every ``ema_update_every``-th optimizer step (§4.1)."""
        mine = EmaSpec(decay=self.cfg.care.ema_decay, update_every=self.cfg.care.ema_update_every)
        other = super().ema_reference()
        if other is not None and other != mine:
            raise ConfigError(f"algorithm.care.ema_decay: a composed variant already asks for a different EMA "
                              f"reference ({other} vs {mine})")
        return mine

    @property
    def needs_answer_span(self) -> bool:
        return True

    # ------------------------------------------------------------------ hook 2
    def score_rollouts(self, rewards: torch.Tensor, sub_scores: Mapping[str, torch.Tensor], group_size: int,
                       ctx: StepContext) -> RolloutScores:
        """R_i = (super()'s reward)_i + λ·acc_i·1[i ∈ H ∩ C] (§4.1 steps 3–6)."""
        base = super().score_rollouts(rewards, sub_scores, group_size, ctx)
        c = self.cfg.care
        if c.accuracy_key not in sub_scores:
            raise KeyError(f"algorithm.care.accuracy_key={c.accuracy_key!r} is not a reward sub-score; "
                           f"available: {sorted(sub_scores)}")
        if ctx.ema_logprobs is None or ctx.answer_mask is None:
            missing = "ema_logprobs" if ctx.ema_logprobs is None else "answer_mask"
            raise KeyError(f"GRPO-CARE needs StepContext.{missing} from the driver (see rl_vlm.algorithms.base)")
        n = base.rewards.shape[0]
        if c.group_scope == "device":
            units = [list(u) for u in ctx.device_mini_batches]
        else:
            units = group_units(n, group_size)

        conf, _ = answer_confidence(ctx.ema_logprobs, ctx.answer_mask, c.confidence_upper_bound)
        out = consistency_bonus(sub_scores[c.accuracy_key], conf, units, c.bonus_coef, c.margin,
                                c.accuracy_threshold)
        new_rewards = base.rewards + out.bonus.to(device=base.rewards.device, dtype=base.rewards.dtype)

        bonused = out.high_accuracy & out.consistent
        num_high = int(out.high_accuracy.sum())
        metrics = dict(base.metrics)
        metrics.update({
            "care/bonus_rate": float(bonused.double().mean()) if n else 0.0,
            "care/consistency_rate": float(bonused.sum()) / num_high if num_high else 0.0,
            "care/high_accuracy_rate": num_high / n if n else 0.0,
            "care/confidence_mean": float(conf.mean()) if n else 0.0,
            "care/bonus_mean": float(out.bonus.mean()) if n else 0.0,
        })
        return RolloutScores(rewards=new_rewards, metrics=metrics)


__all__ = ["Care", "CareBonus", "CareConfig", "answer_confidence", "consistency_bonus", "group_units"]
