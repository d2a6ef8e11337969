"""Per-token log-probs, entropies and view KLs from the final hidden states, a chunk of positions
at a time: the learner's memory grows with T·H, not T·V.

Why. Materialising a micro-batch's logits costs ``n·T·V`` per copy (V = 151,936 for Qwen2.5-VL),
and the usual path makes several: the logits, ``/ temperature``, the fp32 ``log_softmax`` kept
for backward, and again for the entropy (whose graph stays alive while its tensor does, even if
the loss only reads it detached). Only the response positions are ever read, so this module
takes the hidden states ``[n, T, H]`` the backbone already holds, picks the positions that
predict a response token, and applies the LM head to ``chunk_size`` of them at a time, each chunk
under :func:`torch.utils.checkpoint.checkpoint` when grad is on: the chunk's fp32 ``[chunk, V]``
tensors are freed after its forward and recomputed in its backward, so the peak holds one
chunk's, never all ``M·V`` of them (M = response positions). The gradient is exact: the same
operations run, once more in the backward.

The head is a callable (the model's ``lm_head`` module), not its weight: under DeepSpeed ZeRO-3
the weight is only gathered inside the module's own forward, and calling the module lets ZeRO-3
gather it, reduce its gradient and handle tied embeddings as for any module.

Layout. ``[n, T]`` outputs are INPUT-aligned like :class:`~rl_vlm.algorithms.base.LossInputs`:
position t holds the value for token t, predicted by the hidden state at t − 1; positions that do
not hold a response token (the prompt, padding, t = 0) are 0.

Torch only (no Ray, vLLM, DeepSpeed, transformers): the tests check it against the full-logits
reference (:func:`token_logprobs`, :func:`shifted_entropy`) on random tensors and the tiny model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint

EntropyMode = Literal["none", "value", "grad"]
"""What to return besides the log-probs: no entropy; its value only (computed without a graph, a
metric); or with its graph (the loss uses its gradient, ``Algorithm.needs_entropy_grad``)."""

Head = Callable[[torch.Tensor], torch.Tensor]
"""``[m, H]`` hidden states -> ``[m, V]`` logits (the model's ``lm_head``)."""


# ----------------------------------------------------------------------- the full-logits reference
def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[n, T, V] logits, [n, T] ids -> [n, T] log p(token_t | tokens_<t), 0 at t = 0.

    The full-logits reference: every position, ``[n, T, V]`` fp32. The learner no longer calls
    it; tests compare the chunked path and vLLM's log-probs against it."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    out = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(out, (1, 0))


def shifted_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[n, T, V] -> [n, T] entropy of the distribution that predicted token t (0 at t = 0).
    The full-logits reference of the entropy (see :func:`token_logprobs`)."""
    from rl_vlm.algorithms.core import entropy_from_logits

    return torch.nn.functional.pad(entropy_from_logits(logits[:, :-1].float()), (1, 0))


# ----------------------------------------------------------------------- positions
def predicting_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """[n, T] response mask -> [n, T − 1] bool: hidden state t predicts token t + 1, a response token."""
    return response_mask[:, 1:] > 0


def scatter_positions(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[M] values of the positions of ``where`` ([n, T − 1] bool, row-major order, as boolean
    indexing takes them) -> [n, T] input-aligned, 0 elsewhere. Differentiable in ``values``."""
    out = values.new_zeros(where.shape).masked_scatter(where, values)
    return torch.nn.functional.pad(out, (1, 0))


# ----------------------------------------------------------------------- chunked math
def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """[m, V] log-probs -> [m] entropy −Σ p log p, without a second log_softmax; −inf entries
    (masked vocabulary) contribute 0, as in :func:`rl_vlm.algorithms.core.entropy_from_logits`.
    Differentiable (the entropy bonus)."""
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(dim=-1)


@torch.no_grad()
def _entropy_value(logp: torch.Tensor) -> torch.Tensor:
    """:func:`_entropy` without a graph (the metric), in one [m, V] buffer (p) and a dot product
    instead of three buffers. Rows with −inf log-probs (0·(−inf) = NaN in the dot) are redone as
    :func:`_entropy` does."""
    p = logp.exp()
    ent = -torch.linalg.vecdot(p, logp)
    bad = ent.isnan()
    if bool(bad.any()):
        ent = torch.where(bad, -(p * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(dim=-1), ent)
    return ent


def _head_logp(head: Head, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """[m, H] -> [m, V] fp32 log-softmax of the tempered logits. The division happens in fp32 (a
    bf16 model's logits are upcast first); skipped at temperature 1, saving one [m, V] copy."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def _chunked(fn: Callable[..., tuple[torch.Tensor | None, ...]], tensors: tuple[torch.Tensor, ...],
             chunk_size: int, num_chunks: int = 0) -> list[torch.Tensor | None]:
    """Run ``fn`` on ``chunk_size`` rows of every tensor at a time and concatenate each output
    along dim 0 (None outputs stay None). Under grad each call is checkpointed, so only the
    chunk's inputs are kept for backward and its [chunk, V] intermediates are recomputed there.

    ``num_chunks`` > 0: exactly that many calls, the rows split evenly (at most ``chunk_size``
    each while the rows fit ``num_chunks * chunk_size``), some possibly empty. Under ZeRO-3 every
    call of the LM head is a module call that DeepSpeed traces, and its parameter prefetching
    assumes every rank calls the same modules in the same order: a rank whose micro-batch has
    more response positions must not call the head more often than the others (a collective
    mismatch that hangs or aborts the ranks). 0: as many chunks as the rows need (at least one).
    """
    if chunk_size < 1:
        raise ValueError(f"learner.logprob_chunk_size must be >= 1, got {chunk_size}")
    m = int(tensors[0].shape[0])
    calls = num_chunks if num_chunks > 0 else max(math.ceil(m / chunk_size), 1)
    rows = max(math.ceil(m / calls), 1)
    parts: list[tuple[torch.Tensor | None, ...]] = []
    for k in range(calls):
        chunk = tuple(t[k * rows: (k + 1) * rows] for t in tensors)
        if torch.is_grad_enabled():
            # No metadata check of the recomputed tensors: under ZeRO-3 a frozen LM head (LoRA) is
            # released again right after its recompute, before the check reads its shape; its
            # backward hook gathers it again before the weight is used (the values are the same).
            parts.append(checkpoint(fn, *chunk, use_reentrant=False, determinism_check="none"))
        else:
            parts.append(fn(*chunk))
    outs: list[torch.Tensor | None] = []
    for k in range(len(parts[0])):
        col = [p[k] for p in parts]
        outs.append(None if col[0] is None else torch.cat([c for c in col if c is not None]))
    return outs


def head_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: Head, temperature: float,
                  chunk_size: int, entropy: EntropyMode = "none",
                  num_chunks: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token, and the entropy of its distribution, at M positions.

    Args:
        hidden: ``[M, H]`` final hidden states of the predicting positions.
        targets: ``[M]`` int64, the token each position predicts.
        head: the LM head (see :data:`Head`).
        temperature: the logits are divided by it (the rollout temperature).
        chunk_size: positions per chunk (``learner.logprob_chunk_size``).
        entropy: see :data:`EntropyMode`; ``value`` is computed without a graph.
        num_chunks: > 0: exactly that many head calls whatever M (see :func:`_chunked`).

    Returns:
        ``[M]`` fp32 log-probs, and ``[M]`` fp32 entropies or None (``entropy="none"``).
    """

    def fn(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp = _head_logp(head, h, temperature)
        tok = logp.gather(-1, t[:, None]).squeeze(-1)
        if entropy == "none":
            return tok, None
        if entropy == "grad":
            return tok, _entropy(logp)
        # After the log-prob part, so a checkpoint's recompute stops before it (nothing saved here).
        return tok, _entropy_value(logp)

    tok, ent = _chunked(fn, (hidden, targets), chunk_size, num_chunks)
    assert tok is not None
    return tok, ent


def head_kl(hidden_p: torch.Tensor, hidden_q: torch.Tensor, head: Head, temperature: float,
            chunk_size: int, num_chunks: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact KL(P ‖ Q) and KL(Q ‖ P) between the full next-token distributions at M positions,
    P from ``hidden_p`` and Q from ``hidden_q`` (both ``[M, H]``): the ``full_kl`` of an image
    view (:class:`~rl_vlm.algorithms.base.ViewSpec`), P with the sequence's own images, Q with the
    view's. Returns two ``[M]`` fp32 tensors."""

    def fn(hp: torch.Tensor, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp, lq = _head_logp(head, hp, temperature), _head_logp(head, hq, temperature)
        diff = lp - lq
        return (lp.exp() * diff).sum(-1), -(lq.exp() * diff).sum(-1)

    kl, kl_rev = _chunked(fn, (hidden_p, hidden_q), chunk_size, num_chunks)
    assert kl is not None and kl_rev is not None
    return kl, kl_rev


# ----------------------------------------------------------------------- [n, T] sequences
def sequence_logprobs(hidden: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, head: Head,
                      temperature: float, chunk_size: int, entropy: EntropyMode = "none", num_chunks: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`head_logprobs` at the response tokens of a micro-batch.

    Args:
        hidden: ``[n, T, H]`` final (normed) hidden states, e.g. :func:`final_hidden_states`.
        input_ids: ``[n, T]`` the tokens.
        response_mask: ``[n, T]``, 1 on response tokens.
        head, temperature, chunk_size, entropy, num_chunks: as in :func:`head_logprobs`.

    Returns:
        ``[n, T]`` log-probs and entropies (or None), input-aligned, 0 off the response: equal,
        on the response, to :func:`token_logprobs` / :func:`shifted_entropy` of the full logits.
    """
    where = predicting_positions(response_mask)
    tok, ent = head_logprobs(hidden[:, :-1][where], input_ids[:, 1:][where], head, temperature, chunk_size, entropy,
                             num_chunks)
    return scatter_positions(tok, where), None if ent is None else scatter_positions(ent, where)


def sequence_view_kl(hidden_p: torch.Tensor, hidden_q: torch.Tensor, response_mask: torch.Tensor, head: Head,
                     temperature: float, chunk_size: int, num_chunks: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`head_kl` at the response tokens: ``[n, T, H]`` hidden states of the same tokens
    with two image views -> ``[n, T]`` KL(P ‖ Q) and KL(Q ‖ P), input-aligned, 0 off the response."""
    where = predicting_positions(response_mask)
    kl, kl_rev = head_kl(hidden_p[:, :-1][where], hidden_q[:, :-1][where], head, temperature, chunk_size,
                         num_chunks)
    return scatter_positions(kl, where), scatter_positions(kl_rev, where)


# ----------------------------------------------------------------------- the model's side
def _unwrap(model: torch.nn.Module) -> Any:
    """The Hugging Face model inside a DeepSpeed engine (``engine.module``), or ``model`` itself."""
    return getattr(model, "module", model)


def lm_head(model: torch.nn.Module) -> Head:
    """The model's LM head module (``get_output_embeddings()``); calling it lets ZeRO-3 gather it."""
    head = _unwrap(model).get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(_unwrap(model)).__name__} has no LM head")
    return head


def final_hidden_states(model: torch.nn.Module, **inputs: Any) -> torch.Tensor:
    """Run ``model`` (a Hugging Face causal LM such as Qwen2.5-VL, or a DeepSpeed engine around
    one) on ``inputs`` and return the decoder's final normed hidden states ``[n, T, H]``, the
    input of the LM head, without computing logits.

    The model is called as a whole (so a ZeRO-3 engine's start-of-forward hooks run) with
    ``logits_to_keep`` an empty index: its own LM head sees ``[n, 0, H]``. The hidden states are
    taken from the decoder's final norm with a forward hook: ``output_hidden_states`` would also
    keep every layer's output alive in no-grad passes."""
    captured: list[torch.Tensor] = []
    norm = _unwrap(model).get_decoder().norm
    handle = norm.register_forward_hook(lambda _module, _args, out: captured.append(out))
    ids = inputs.get("input_ids")
    device = ids.device if isinstance(ids, torch.Tensor) else None
    try:
        model(**inputs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{type(_unwrap(model)).__name__}'s final norm did not run")
    return captured[-1]


__all__ = ["EntropyMode", "Head", "final_hidden_states", "head_kl", "head_logprobs", "lm_head",
           "predicting_positions", "scatter_positions", "sequence_logprobs", "sequence_view_kl",
           "shifted_entropy", "token_logprobs"]
