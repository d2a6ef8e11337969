"""Who gets which sequences: the split of one step's sequences over the learner ranks and the
global loss denominators that go with it.

Kept out of the learner pool so it is pure index arithmetic (no Ray, no tensors): every index
list and denominator is checked against hand-computed cases in
``tests/distributed/test_sharding.py`` without starting an actor.

The split. Each mini-batch (``mini_batch_size`` prompts x ``group_size`` sequences, one
optimizer step) is cut into ``world_size`` contiguous slices of equal length, slice r to rank r.
A rank's slice of a mini-batch is what that device's optimizer step sees (a *device
mini-batch*), cut again into micro-batches of ``micro_batch_size`` for gradient accumulation.

Token budget (``learner.max_tokens_per_micro_batch`` > 0, verl's ``use_dynamic_bsz``). Sequence
counts stop deciding the split; tokens do. Each mini-batch's sequences are dealt to the ranks so
that every rank gets the same number of them with the token totals balanced (longest first, to
the rank with the fewest tokens that still has room), and each rank's share is cut into the
fewest micro-batches K whose tokens (prompt + response) stay within the budget, K the same on
every rank (ZeRO-3 ranks must run the same forwards). A packed forward (no padding) counts each
micro-batch's token sum and balances the sequences over the K micro-batches the same way; a
padded one counts rows x the longest row and groups similar lengths instead, so that little of
the budget is padding. A sequence longer than the budget gets a micro-batch of its own. The
denominators are those of the mini-batch, so the loss does not change with the split.

The denominators. The algorithm normalises each micro-batch loss by totals over the whole
mini-batch on *all* ranks (tokens, or non-empty sequences), so that summing micro-batch losses
over micro-batches and ranks gives exactly the mini-batch loss, whatever the split (see
:mod:`rl_vlm.distributed.workers.learner`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rl_vlm.batch import LearnerBatch, StepShape


@dataclass
class RankShard:
    """One rank's share of a step: the sequences of every mini-batch, in mini-batch order.

    ``mini_batches[k]`` lists indices into ``prompt_ids`` belonging to mini-batch k;
    ``num_tokens[k]`` and ``num_seqs[k]`` are that mini-batch's totals over *all* ranks (the
    loss denominators).
    """

    images: list[list[Any]]
    """Distinct PIL image lists this rank needs (raw and view images alike)."""
    image_index: list[int]
    """[n] which entry of ``images`` each sequence was sampled with."""
    view_index: dict[str, list[int]]
    """view name -> [n] which entry of ``images`` is that view of each sequence."""
    prompt_ids: list[list[int]]
    """[n] prompt tokens (image pads expanded)."""
    response_ids: list[list[int]]
    """[n] response tokens."""
    mini_batches: list[list[int]]
    micro_batches: list[list[list[int]]]
    """``micro_batches[k]``: mini-batch k's micro-batches (positions into ``prompt_ids``), in the
    order the rank runs them; every rank has the same number per mini-batch."""
    num_tokens: list[float]
    num_seqs: list[float]
    max_response_len: int
    temperature: float = 1.0
    """Logits are divided by the rollout temperature before log-softmax (as verl/EasyR1 do)."""
    step: int = 0
    total_steps: int = 0


@dataclass(frozen=True)
class StepSharding:
    """The split of one step's N sequences (global indices 0..N-1) over ``world_size`` ranks."""

    assignment: list[list[int]]
    """Per rank, the global indices of its sequences, mini-batch after mini-batch: rank r's
    results come back in this order and are scattered to these indices."""
    mini_batches: list[list[list[int]]]
    """Per rank, per mini-batch, positions in that rank's ``assignment`` (its
    :attr:`RankShard.mini_batches`)."""
    num_tokens: list[float]
    """Per mini-batch, its response tokens over all ranks."""
    num_seqs: list[float]
    """Per mini-batch, its sequences with a non-empty response over all ranks (an empty
    response carries no loss, so it must not dilute a sequence mean)."""
    device_mini_batches: list[list[int]]
    """Global indices of every (mini-batch k, rank r) slice, entry ``k * world_size + r``: the
    unit some algorithms normalise statistics over (VPPO, GRPO-CARE)."""
    micro_batches: list[list[int]]
    """Global indices of every micro-batch, each device mini-batch cut into
    ``micro_batch_size`` pieces (or by the token budget), in the order of
    :attr:`device_mini_batches`."""
    rank_micro_batches: list[list[list[list[int]]]]
    """Per rank, per mini-batch, its micro-batches as positions in that rank's ``assignment``
    (its :attr:`RankShard.micro_batches`)."""


def balanced_bins(items: Sequence[int], sizes: Sequence[int], bins: int, capacity: int = 0) -> list[list[int]]:
    """Deal ``items`` (``sizes[i]`` tokens each) into ``bins`` lists with balanced token totals:
    longest first (ties: lower index first), each to the bin with the fewest tokens among those
    holding fewer than ``capacity`` items (0: no cap). Each bin keeps its items in input order.
    With at least ``bins`` items no bin is left empty (the first ``bins`` go to empty bins)."""
    load = [0] * bins
    members: list[list[int]] = [[] for _ in range(bins)]
    for i in sorted(items, key=lambda i: (-sizes[i], i)):
        room = [b for b in range(bins) if not capacity or len(members[b]) < capacity]
        b = min(room, key=lambda b: (load[b], b))
        load[b] += sizes[i]
        members[b].append(i)
    order = {i: k for k, i in enumerate(items)}
    return [sorted(m, key=order.__getitem__) for m in members]


def _cost(micro: Sequence[int], sizes: Sequence[int], padded: bool) -> int:
    """Tokens the forward of ``micro`` sees: its rows padded to the longest, or their sum packed."""
    return len(micro) * max(sizes[i] for i in micro) if padded else sum(sizes[i] for i in micro)


def _padded_runs(items: Sequence[int], sizes: Sequence[int], budget: int, k: int = 0) -> list[list[int]]:
    """Longest first, consecutive runs whose padded cost stays within ``budget`` (a single item
    may exceed it); then, while fewer than ``k``, the costliest run with two or more items is
    halved. Similar lengths share a micro-batch, so little is padding."""
    runs: list[list[int]] = []
    for i in sorted(items, key=lambda i: (-sizes[i], i)):
        if runs and _cost([*runs[-1], i], sizes, True) <= budget:
            runs[-1].append(i)
        else:
            runs.append([i])
    while len(runs) < k:
        j = max((j for j in range(len(runs)) if len(runs[j]) > 1), key=lambda j: _cost(runs[j], sizes, True))
        half = len(runs[j]) // 2
        runs[j: j + 1] = [runs[j][:half], runs[j][half:]]
    order = {i: n for n, i in enumerate(items)}
    return [sorted(r, key=order.__getitem__) for r in runs]


def token_budget_micro_batches(parts: Sequence[Sequence[int]], sizes: Sequence[int], budget: int,
                               padded: bool = False) -> list[list[list[int]]]:
    """Cut every rank's ``parts[r]`` (equally many items each) into the same number K of
    micro-batches, the fewest for which every micro-batch of every rank costs at most ``budget``
    tokens (:func:`_cost`) or holds a single item (one longer than the budget). Packed: the items
    balanced over the K micro-batches by :func:`balanced_bins`. Padded: runs of similar lengths
    (:func:`_padded_runs`). Returns, per rank, its K micro-batches."""
    n = min((len(p) for p in parts), default=0)
    if n == 0:
        return [[] for _ in parts]
    if padded:
        k = max(len(_padded_runs(p, sizes, budget)) for p in parts)
        return [_padded_runs(p, sizes, budget, k) for p in parts]
    # A lower bound: an item over the budget fills a micro-batch by itself.
    k = min(max(max(math.ceil(sum(min(sizes[i], budget) for i in p) / budget) for p in parts), 1), n)
    while True:
        cut = [balanced_bins(p, sizes, k) for p in parts]
        if k >= n or all(len(m) == 1 or _cost(m, sizes, False) <= budget for c in cut for m in c):
            return cut
        k += 1


def shard_step(response_lengths: Sequence[int], world_size: int, seqs_per_mini_batch: int,
               micro_batch_size: int, seq_lengths: Sequence[int] | None = None,
               max_tokens_per_micro_batch: int = 0, padded: bool = False) -> StepSharding:
    """Split N = ``len(response_lengths)`` sequences (the mini-batches are consecutive runs of
    ``seqs_per_mini_batch``, the last one possibly shorter) over ``world_size`` ranks.

    Each rank gets ``len(mini-batch) // world_size`` sequences of every mini-batch, so the ranks
    run the same number of micro-batches (DeepSpeed accumulates a fixed count); a remainder would
    be left out of every rank but still counted in the denominators. The driver's batch sizes
    divide evenly (config validation), so there is none in practice.

    ``max_tokens_per_micro_batch`` > 0: the token-budget split of the module docstring, over
    ``seq_lengths`` (prompt + response tokens of each sequence; required then), counting the
    padding when the forward pads (``padded``)."""
    W, m = world_size, micro_batch_size
    N = len(response_lengths)
    budget = max_tokens_per_micro_batch
    if budget and (seq_lengths is None or len(seq_lengths) != N):
        raise ValueError("a token budget needs every sequence's length (seq_lengths)")
    assignment: list[list[int]] = [[] for _ in range(W)]
    mbs: list[list[list[int]]] = [[] for _ in range(W)]
    rank_micro: list[list[list[list[int]]]] = [[] for _ in range(W)]
    num_tokens: list[float] = []
    num_seqs: list[float] = []
    device_mini_batches: list[list[int]] = []
    micro_batches: list[list[int]] = []
    for start in range(0, N, seqs_per_mini_batch):
        idx = list(range(start, min(start + seqs_per_mini_batch, N)))
        # Integer sums, converted once: the denominators must not depend on summation order.
        num_tokens.append(float(sum(response_lengths[i] for i in idx)))
        num_seqs.append(float(sum(1 for i in idx if response_lengths[i])))
        per = len(idx) // W
        if budget:
            assert seq_lengths is not None
            parts = balanced_bins(idx[: per * W], seq_lengths, W, capacity=per)
            cuts = token_budget_micro_batches(parts, seq_lengths, budget, padded)
        else:
            parts = [idx[r * per: (r + 1) * per] for r in range(W)]
            cuts = [[p[j: j + m] for j in range(0, len(p), m)] for p in parts]
        for r, (part, cut) in enumerate(zip(parts, cuts, strict=True)):
            offset = len(assignment[r])
            pos = {i: offset + j for j, i in enumerate(part)}
            mbs[r].append(list(range(offset, offset + len(part))))
            rank_micro[r].append([[pos[i] for i in micro] for micro in cut])
            assignment[r].extend(part)
            device_mini_batches.append(part)
            micro_batches.extend(cut)
    return StepSharding(assignment, mbs, num_tokens, num_seqs, device_mini_batches, micro_batches, rank_micro)


def intern(imgs: list[Any], images: list[list[Any]], distinct: dict[int, int]) -> int:
    """Index of the image list ``imgs`` in ``images``, appending it the first time it is seen.

    Keyed by identity: the G sequences of a group share one list object, so each rank ships and
    preprocesses a group's images once however many of its sequences it holds."""
    if id(imgs) not in distinct:
        distinct[id(imgs)] = len(images)
        images.append(imgs)
    return distinct[id(imgs)]


def rank_shards(batch: LearnerBatch, sharding: StepSharding, shape: StepShape) -> list[RankShard]:
    """Every rank's :class:`RankShard` of ``batch`` under ``sharding``, in rank order."""
    shards = []
    for r, sel in enumerate(sharding.assignment):
        images: list[list[Any]] = []
        distinct: dict[int, int] = {}  # id(image list) -> index in images
        image_index = [intern(batch.images[i], images, distinct) for i in sel]
        view_index = {name: [intern(v[i], images, distinct) for i in sel] for name, v in batch.view_images.items()}
        shards.append(RankShard(
            images=images, image_index=image_index, view_index=view_index,
            prompt_ids=[batch.prompt_ids[i] for i in sel], response_ids=[batch.response_ids[i] for i in sel],
            mini_batches=sharding.mini_batches[r], micro_batches=sharding.rank_micro_batches[r],
            num_tokens=sharding.num_tokens, num_seqs=sharding.num_seqs,
            max_response_len=shape.max_response_len, temperature=shape.temperature, step=shape.step,
            total_steps=shape.total_steps))
    return shards


def sft_num_tokens(device_mini_batches: Sequence[Sequence[int]], world_size: int, weights: Sequence[float],
                   response_lengths: Sequence[int]) -> list[float]:
    """Per mini-batch, the weighted response tokens over all ranks: the global denominator of
    the SFT token-mean NLL. ``weights[i]`` is 1 for a trained sequence and 0 for a padding copy
    (which only keeps the micro-batch count DeepSpeed accumulates over), so padding adds no
    tokens. Summed in (rank, sequence) order, as float."""
    W = world_size
    return [float(sum(weights[i] * response_lengths[i] for part in device_mini_batches[k: k + W] for i in part))
            for k in range(0, len(device_mini_batches), W)]


def per_rank(values: Sequence[Any], sharding: StepSharding) -> list[list[Any]]:
    """``values`` (one per global sequence) cut into each rank's share, in assignment order."""
    return [[values[i] for i in sel] for sel in sharding.assignment]


def gather(per_rank_values: Sequence[Sequence[Any]], sharding: StepSharding, empty: Any) -> list[Any]:
    """The inverse of :func:`per_rank`: each rank's results scattered back to global order;
    sequences no rank holds stay ``empty``."""
    out = [empty] * sum(len(a) for a in sharding.assignment)
    for r, values in enumerate(per_rank_values):
        for i, v in zip(sharding.assignment[r], values, strict=True):
            out[i] = v
    return out
