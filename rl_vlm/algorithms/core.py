"""Shared tensor math of the GRPO family (algorithms.md §1.1), torch only.

Every per-token function works on ``[N, T]`` tensors aligned with a float ``mask`` ``[N, T]``
(1 on response tokens, EOS included; 0 on prompt and padding). Per-token functions return
*unmasked* values; masking happens once, in :func:`aggregate` / :func:`masked_sum`, so that
padding never leaks into a loss or a metric.

Distributed normalisation. A mini-batch is split over ranks and then into micro-batches, and
the learner back-propagates each micro-batch separately. :func:`aggregate` therefore takes the
*global* denominators of the mini-batch (token count, sequence count, max response length) as
arguments: each micro-batch returns its share, and the shares sum exactly (value and gradient)
to the loss of the whole mini-batch computed in one piece.
"""

from __future__ import annotations

from typing import Literal

import torch

KLKind = Literal["k1", "k2", "k3", "abs"]
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3", "abs")

# exp() of a log-ratio beyond this overflows fp32 soon after; verl/EasyR1 clamp here too (§1.1).
LOG_RATIO_CLAMP = 20.0
# k3 can still be huge for |δ| close to 20; its value is clamped like verl's low_var_kl (§1.1).
K3_VALUE_CLAMP = 10.0


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask over ``dim`` (all elements when None). ``values``/``mask``: same shape.

    Uses ``where`` rather than a product so that inf/NaN in masked-out positions (e.g. a padded
    log-ratio) cannot turn the sum into NaN.
    """
    masked = torch.where(mask.bool(), values * mask, torch.zeros_like(values))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask / Σ mask over ``dim``; 0 where the mask is empty (not NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp_min(1.0)


def group_advantages(rewards: torch.Tensor, group_size: int, norm_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantage, algorithms.md §1.1: A_i = (R_i − mean_g R) / (std_g R + ε).

    Args:
        rewards: ``[N]`` scalar reward per sequence, group-major (N = B·G, sample j of prompt i
            at index i·G + j, as in :mod:`rl_vlm.batch`).
        group_size: G; must divide N.
        norm_by_std: divide by the group's unbiased (N−1) std; False gives Dr. GRPO
            (centring only).
        eps: ε in the denominator (1e-6 in verl/EasyR1, 1e-4 in TRL).

    Returns:
        ``[N]`` float32 advantages. A group whose rewards are all equal gets exactly 0 (the
        floating-point mean of equal values need not equal them, so this is enforced rather
        than left to rounding). G = 1 gives A = R (verl's mean 0 / std 1 convention).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the {n} rewards")
    r = rewards.detach().float()
    if group_size == 1:
        return r.clone()
    g = r.view(-1, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if norm_by_std:
        centred = centred / (g.std(dim=1, keepdim=True, unbiased=True) + eps)
    constant = (g.amax(dim=1, keepdim=True) == g.amin(dim=1, keepdim=True))
    return torch.where(constant, torch.zeros_like(centred), centred).view(n)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from sampled-token log-probs, algorithms.md §1.1.

    With ℓ = ``logprobs`` and ℓ_ref = ``ref_logprobs`` (both ``[N, T]``):

    - ``k1``: ℓ − ℓ_ref
    - ``k2``: ½ (ℓ − ℓ_ref)²
    - ``abs``: |ℓ − ℓ_ref|
    - ``k3`` (verl "low_var_kl", DeepSeekMath): δ = clamp(ℓ_ref − ℓ, ±20); exp(δ) − δ − 1,
      clamped to ±10.

    Returns ``[N, T]`` (unmasked); gradients flow to both arguments unless they are detached.
    """
    diff = logprobs - ref_logprobs
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.square()
    if kind == "abs":
        return diff.abs()
    if kind == "k3":
        delta = (-diff).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.exp(delta) - delta - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)
    raise ValueError(f"unknown KL estimator {kind!r}; valid: {list(KL_KINDS)}")


def policy_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """r = exp(clamp(ℓ − ℓ_old, ±20)), ``[N, T]`` (§1.1: the clamp keeps exp finite)."""
    return torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        clip_low: float, clip_high: float, clip_dual: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate with clip-higher and dual-clip, algorithms.md §1.1.

    With r = exp(clamp(ℓ − ℓ_old, ±20)) and A = ``advantages``:

        L¹ = −A·r,   L² = −A·clip(r, 1 − clip_low, 1 + clip_high),   L = max(L¹, L²)
        where A < 0 and clip_dual > 0:   L = min(L, −A·clip_dual)

    Args:
        logprobs: ``[N, T]`` ℓ under the current policy (with grad).
        old_logprobs: ``[N, T]`` ℓ_old under the rollout policy (no grad).
        advantages: ``[N, T]`` per-token advantages.
        clip_low, clip_high: ε_low, ε_high (asymmetric "clip-higher" when they differ).
        clip_dual: the dual-clip constant C (> 1); 0 disables it.

    Returns:
        ``(loss, clipped)``, both ``[N, T]`` and unmasked. ``clipped`` is 1.0 on tokens whose
        gradient is cut by clipping — the ratio left the trust region in the direction the
        advantage pushes it (r > 1+ε_high with A > 0, r < 1−ε_low with A < 0), or the dual
        clip is active (A < 0, r > C) — and 0.0 elsewhere.
    """
    ratio = policy_ratio(logprobs, old_logprobs)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    if clip_dual > 0:
        # Bounds the loss (and so the gradient) of negative-advantage tokens whose ratio has
        # exploded: without it, −A·r grows without limit as r → ∞ (Ye et al., dual-clip PPO).
        dual_bound = -advantages * clip_dual
        dual = (advantages < 0) & (loss > dual_bound)
        loss = torch.where(dual, dual_bound, loss)
        clipped = clipped | dual
    return loss, clipped.to(loss.dtype)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: AggMode, num_tokens: float,
              num_seqs: float, max_len: int) -> torch.Tensor:
    """Reduce a per-token ``[n, T]`` quantity to a scalar with GLOBAL denominators, §1.1 table.

    ``values``/``mask`` are one micro-batch (n sequences); ``num_tokens`` = Σ mask and
    ``num_seqs`` = number of sequences with ≥ 1 valid token, both over the whole mini-batch on
    all ranks; ``max_len`` = the response-length normaliser L of Dr. GRPO (the configured max
    response length, never the padded width of one micro-batch). With ℒ = values, m = mask,
    S = num_seqs:

    - ``token-mean``:               Σ_{i,t} ℒ m / num_tokens
    - ``seq-mean-token-mean``:      (1/S) Σ_i [Σ_t ℒ m / Σ_t m]   (a sequence's own count is local)
    - ``seq-mean-token-sum``:       (1/S) Σ_i Σ_t ℒ m
    - ``seq-mean-token-sum-norm``:  Σ_{i,t} ℒ m / (S · max_len)   (Dr. GRPO; TRL "dr_grpo")

    Each is linear in the per-sequence terms, so the values returned for the micro-batches of
    a mini-batch (on every rank) sum — in value and gradient — to the mode applied to the whole
    mini-batch at once. Sequences with no valid token contribute 0 everywhere. A zero
    denominator (an empty mini-batch) gives 0 instead of NaN.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    if mode == "token-mean":
        return masked_sum(values, mask) / max(float(num_tokens), 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked_sum(values, mask, dim=-1) / mask.sum(dim=-1).clamp_min(1.0)
        return per_seq.sum() / max(float(num_seqs), 1.0)
    if mode == "seq-mean-token-sum":
        return masked_sum(values, mask) / max(float(num_seqs), 1.0)
    if mode == "seq-mean-token-sum-norm":
        if max_len <= 0:
            raise ValueError(f"seq-mean-token-sum-norm needs max_len > 0, got {max_len}")
        return masked_sum(values, mask) / (max(float(num_seqs), 1.0) * float(max_len))
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {list(AGG_MODES)}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Exact entropy H = −Σ_v p_v log p_v of softmax(``logits``) over the last dim, §1.1.

    ``logits``: ``[..., V]`` -> ``[...]``. Computed from ``log_softmax`` (stable for large logits);
    −inf logits (masked vocabulary entries) contribute 0 rather than 0·(−inf) = NaN. Pass fp32
    logits for bf16 models: the sum over a large vocabulary loses precision in bf16.
    """
    logp = torch.log_softmax(logits, dim=-1)
    # Clamp only changes −inf entries (p = 0 there), so the value and gradient elsewhere are exact.
    logp_finite = logp.clamp_min(torch.finfo(logp.dtype).min)
    return -(logp.exp() * logp_finite).sum(dim=-1)


def masked_row_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile of ``values`` over the positions where ``mask`` is 1, ``[N, T]`` -> ``[N, 1]``.

    Linear interpolation between order statistics (``torch.nanquantile``'s default), as PAPO's
    token-level KL_prcp mask uses it (algorithms.md §2.1). A row with no valid position gives
    NaN, so any ``x >= quantile`` comparison on it is False. Computed in fp32 at least
    (``nanquantile`` has no bf16 kernel) and returned in that dtype; no gradient.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    work = values.detach()
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()
    return torch.nanquantile(work.masked_fill(~mask.bool(), float("nan")), q, dim=-1, keepdim=True)


def sft_nll(logprobs: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """Supervised loss of the rejection-sampling SFT stage: token-mean NLL with a global denominator.

    Args:
        logprobs: ``[n, T]`` log π_θ of each token (a micro-batch).
        mask: ``[n, T]`` float, 1 on the kept responses' tokens (0 on prompt, padding and on
            padding sequences that only fill the micro-batch count).
        num_tokens: the number of kept response tokens of the whole mini-batch over all ranks.

    Returns:
        Scalar −Σ ℓ·m / num_tokens: the micro-batches' values sum to the token-mean NLL of the
        mini-batch, as :func:`aggregate` does for ``token-mean``.
    """
    return -masked_sum(logprobs, mask) / max(float(num_tokens), 1.0)
