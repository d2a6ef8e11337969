"""The split of a step's sequences over learner ranks and its global denominators
(rl_vlm.distributed.sharding), against hand-computed cases."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from rl_vlm.batch import LearnerBatch, StepShape
from rl_vlm.distributed.sharding import (
    balanced_bins,
    gather,
    intern,
    per_rank,
    rank_shards,
    sft_num_tokens,
    shard_step,
)

# 2 prompts x 4 samples, group-major; sequences 1 and 6 have empty responses.
LENGTHS = [3, 0, 2, 5, 1, 4, 0, 6]


def test_two_ranks_one_prompt_per_mini_batch_micro_batch_two() -> None:
    s = shard_step(LENGTHS, world_size=2, seqs_per_mini_batch=4, micro_batch_size=2)
    # Mini-batch 0 = sequences 0-3 (rank 0: 0,1; rank 1: 2,3), mini-batch 1 = 4-7.
    assert s.assignment == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert s.mini_batches == [[[0, 1], [2, 3]], [[0, 1], [2, 3]]]
    assert s.num_tokens == [3 + 0 + 2 + 5, 1 + 4 + 0 + 6] == [10.0, 11.0]
    # Empty responses (1 and 6) are not sequences of the sequence mean.
    assert s.num_seqs == [3.0, 3.0]
    assert s.device_mini_batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert s.micro_batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(isinstance(x, float) for x in s.num_tokens + s.num_seqs)


def test_two_ranks_one_mini_batch_micro_batches_inside_each_device_mini_batch() -> None:
    s = shard_step(LENGTHS, world_size=2, seqs_per_mini_batch=8, micro_batch_size=2)
    assert s.assignment == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert s.mini_batches == [[[0, 1, 2, 3]], [[0, 1, 2, 3]]]
    assert s.num_tokens == [21.0]
    assert s.num_seqs == [6.0]
    assert s.device_mini_batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert s.micro_batches == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_three_ranks_two_mini_batches_micro_batch_one() -> None:
    # 6 sequences in mini-batches of 3 over 3 ranks: one sequence per rank per mini-batch.
    s = shard_step([1, 2, 3, 4, 5, 6], world_size=3, seqs_per_mini_batch=3, micro_batch_size=1)
    assert s.assignment == [[0, 3], [1, 4], [2, 5]]
    # Positions in each rank's own list: mini-batch 0 is its first sequence, mini-batch 1 its second.
    assert s.mini_batches == [[[0], [1]], [[0], [1]], [[0], [1]]]
    assert s.num_tokens == [6.0, 15.0]
    assert s.num_seqs == [3.0, 3.0]
    assert s.device_mini_batches == [[0], [1], [2], [3], [4], [5]]
    assert s.micro_batches == [[0], [1], [2], [3], [4], [5]]


def test_a_remainder_is_counted_but_assigned_to_no_rank() -> None:
    # The driver's sizes always divide (config validation); this pins what happens otherwise.
    s = shard_step([1, 1, 1, 1, 7], world_size=2, seqs_per_mini_batch=4, micro_batch_size=1)
    assert s.assignment == [[0, 1], [2, 3]]
    assert s.num_tokens == [4.0, 7.0]
    assert s.num_seqs == [4.0, 1.0]
    assert s.device_mini_batches == [[0, 1], [2, 3], [], []]
    assert s.mini_batches == [[[0, 1], []], [[0, 1], []]]


def test_no_sequences() -> None:
    s = shard_step([], world_size=2, seqs_per_mini_batch=1, micro_batch_size=1)
    assert s.assignment == [[], []] and s.mini_batches == [[], []]
    assert s.num_tokens == s.num_seqs == s.device_mini_batches == s.micro_batches == []


def test_sft_token_denominators_ignore_weight_zero_padding() -> None:
    # 6 kept sequences padded to 8 (two mini-batches of 4) with weight-0 copies of 0 and 1.
    lengths = [1, 2, 3, 4, 5, 6, 1, 2]
    weights = [1.0] * 6 + [0.0] * 2
    s = shard_step(lengths, world_size=2, seqs_per_mini_batch=4, micro_batch_size=1)
    assert s.device_mini_batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sft_num_tokens(s.device_mini_batches, 2, weights, lengths) == [1 + 2 + 3 + 4, 5 + 6 + 0 + 0]
    # The RL denominators of the same split count the padding (it is a real sequence there).
    assert s.num_tokens == [10.0, 14.0]


def test_sft_token_denominators_one_rank() -> None:
    s = shard_step([3, 5, 2, 3], world_size=1, seqs_per_mini_batch=2, micro_batch_size=1)
    assert sft_num_tokens(s.device_mini_batches, 1, [1.0, 1.0, 1.0, 0.0], [3, 5, 2, 3]) == [8.0, 2.0]


def test_per_rank_and_gather_are_inverse() -> None:
    s = shard_step(LENGTHS, world_size=2, seqs_per_mini_batch=4, micro_batch_size=2)
    values = [f"v{i}" for i in range(8)]
    parts = per_rank(values, s)
    assert parts == [["v0", "v1", "v4", "v5"], ["v2", "v3", "v6", "v7"]]
    assert gather(parts, s, None) == values


def test_intern_is_by_identity() -> None:
    a, same_as_a, b = ["img"], ["img"], ["other"]
    images: list[list[str]] = []
    distinct: dict[int, int] = {}
    assert [intern(x, images, distinct) for x in (a, a, same_as_a, b, a)] == [0, 0, 1, 2, 0]
    assert images[0] is a and images[1] is same_as_a and images[2] is b


def test_rank_shards_carry_their_sequences_interned_images_and_the_global_denominators() -> None:
    # A group shares one image list (and one list per view), as LearnerBatch promises.
    img = [["A"], ["B"]]
    view = [["A'"], ["B'"]]
    batch = LearnerBatch(
        prompt_ids=[[100 + i] for i in range(8)], response_ids=[[7] * n for n in LENGTHS],
        images=[img[i // 4] for i in range(8)], view_images={"noisy": [view[i // 4] for i in range(8)]})
    shape = StepShape(mini_batch_size=1, group_size=4, max_response_len=12, temperature=0.7, step=3, total_steps=20)
    s = shard_step([len(r) for r in batch.response_ids], 2, 4, 2)
    r0, r1 = rank_shards(batch, s, shape)
    assert r0.prompt_ids == [[100], [101], [104], [105]]
    assert r1.response_ids == [[7] * 2, [7] * 5, [], [7] * 6]
    # Rank 0 holds two sequences of each group: each group's raw and view list once.
    assert r0.images == [["A"], ["B"], ["A'"], ["B'"]]
    assert r0.images[0] is img[0] and r0.images[3] is view[1]
    assert r0.image_index == [0, 0, 1, 1]
    assert r0.view_index == {"noisy": [2, 2, 3, 3]}
    assert r0.mini_batches == r1.mini_batches == [[0, 1], [2, 3]]
    assert r0.num_tokens == r1.num_tokens == [10.0, 11.0]
    assert r0.num_seqs == [3.0, 3.0]
    assert (r1.max_response_len, r1.temperature, r1.step, r1.total_steps) == (12, 0.7, 3, 20)


def test_step_shape_is_frozen() -> None:
    shape = StepShape(mini_batch_size=1, group_size=4, max_response_len=12, temperature=1.0, step=1, total_steps=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape.step = 2  # type: ignore[misc]


def test_pure_modules_import_no_ray() -> None:
    code = ("import sys, rl_vlm.distributed.sharding, rl_vlm.distributed.interfaces, rl_vlm.distributed.group, "
            "rl_vlm.distributed.pools; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ token budget
def test_balanced_bins_hand_computed() -> None:
    # Longest first, each to the lightest bin with room (ties: the lower bin), kept in input order.
    sizes = [10, 3, 7, 5, 2, 8, 4, 6]
    assert balanced_bins(list(range(8)), sizes, 2, capacity=4) == [[0, 1, 6, 7], [2, 3, 4, 5]]
    assert balanced_bins([0, 1, 6, 7], sizes, 3) == [[0], [7], [1, 6]]
    assert balanced_bins([0, 1], sizes, 2) == [[0], [1]]


def test_token_budget_split_hand_computed() -> None:
    # Sequence lengths (prompt + response) 10, 3, 7, 5, 2, 8, 4, 6; one mini-batch of 8 over 2 ranks,
    # a 12-token budget. Ranks (4 sequences each): 0, 1, 6, 7 (23 tokens) and 2, 3, 4, 5 (22). Rank 0
    # cannot fit 2 micro-batches (10 + anything > 12), so both ranks run 3: {0} {7} {1, 6} and {5} {2} {3, 4}.
    seq = [10, 3, 7, 5, 2, 8, 4, 6]
    resp = [4, 1, 3, 2, 1, 5, 2, 3]
    s = shard_step(resp, world_size=2, seqs_per_mini_batch=8, micro_batch_size=1, seq_lengths=seq,
                   max_tokens_per_micro_batch=12)
    assert s.assignment == [[0, 1, 6, 7], [2, 3, 4, 5]]
    assert s.rank_micro_batches == [[[[0], [3], [1, 2]]], [[[3], [0], [1, 2]]]]
    assert s.micro_batches == [[0], [7], [1, 6], [5], [2], [3, 4]]
    assert s.num_tokens == [float(sum(resp))] and s.num_seqs == [8.0]
    assert all(sum(seq[i] for i in m) <= 12 for m in s.micro_batches)


def test_token_budget_same_count_on_every_rank_and_a_long_sequence_alone() -> None:
    # Two mini-batches of 4 over 2 ranks; sequence 1 (30 tokens) is longer than the 16-token budget.
    seq = [5, 30, 6, 4, 3, 3, 3, 3]
    s = shard_step([1] * 8, world_size=2, seqs_per_mini_batch=4, micro_batch_size=1, seq_lengths=seq,
                   max_tokens_per_micro_batch=16)
    for r in range(2):
        assert [len(m) for m in s.rank_micro_batches[r]] == [len(m) for m in s.rank_micro_batches[0]]
    # Mini-batch 0: the 30-token sequence alone, the rest within 16; mini-batch 1 fits one micro-batch.
    first = [m for m in s.micro_batches[:4]]
    assert [1] in first and all(sum(seq[i] for i in m) <= 16 for m in first if m != [1])
    assert [len(m) for m in s.rank_micro_batches[0]] == [2, 1]
    # Every sequence is in exactly one micro-batch of its own rank and mini-batch.
    for r in range(2):
        for k, micros in enumerate(s.rank_micro_batches[r]):
            assert sorted(i for m in micros for i in m) == s.mini_batches[r][k]


def test_without_a_budget_micro_batches_are_runs_of_micro_batch_size() -> None:
    s = shard_step(LENGTHS, world_size=2, seqs_per_mini_batch=8, micro_batch_size=2)
    assert s.rank_micro_batches == [[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]]]


def test_padded_token_budget_groups_similar_lengths_hand_computed() -> None:
    # The same split with a padded forward: a micro-batch costs rows x its longest row. Rank 0
    # (10, 3, 4, 6): {10} {6, 4} (2 x 6 = 12) {3}; rank 1 (7, 5, 2, 8): {8} {7} {5, 2} (2 x 5 = 10).
    seq = [10, 3, 7, 5, 2, 8, 4, 6]
    s = shard_step([1] * 8, world_size=2, seqs_per_mini_batch=8, micro_batch_size=1, seq_lengths=seq,
                   max_tokens_per_micro_batch=12, padded=True)
    assert s.micro_batches == [[0], [6, 7], [1], [5], [2], [3, 4]]
    assert s.rank_micro_batches == [[[[0], [2, 3], [1]]], [[[3], [0], [1, 2]]]]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_token_budget_invariants(padded: bool, seed: int) -> None:
    import random

    rng = random.Random(seed)
    W, per_mb, budget = rng.choice([1, 2, 4]), 16, 64
    seq = [rng.choice([rng.randint(4, 40), rng.randint(40, 80)]) for _ in range(3 * per_mb)]
    s = shard_step([n // 2 for n in seq], world_size=W, seqs_per_mini_batch=per_mb, micro_batch_size=1,
                   seq_lengths=seq, max_tokens_per_micro_batch=budget, padded=padded)
    for k in range(3):
        counts = {len(s.rank_micro_batches[r][k]) for r in range(W)}
        assert len(counts) == 1  # the same number of forwards on every rank
        for r in range(W):
            micros = s.rank_micro_batches[r][k]
            assert sorted(i for m in micros for i in m) == s.mini_batches[r][k] and all(micros)
            for m in micros:
                lengths = [seq[s.assignment[r][i]] for i in m]
                cost = len(m) * max(lengths) if padded else sum(lengths)
                assert cost <= budget or len(m) == 1
