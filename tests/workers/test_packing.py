"""The packed layout's index arithmetic on hand-made tensors (torch only; the tiny model's packed
forward is checked against the padded one in test_logprobs.py)."""

from __future__ import annotations

import torch

from rl_vlm.distributed.workers.packing import distinct_images, pack, packed_position_ids, unpack


def _images(grids: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches numbered by image: image k's rows hold the value k (so a selection can be read back)."""
    thw = torch.tensor(grids)
    pix = torch.cat([torch.full((t * h * w, 3), float(k)) for k, (t, h, w) in enumerate(grids)])
    return pix, thw


def test_distinct_images_hand_computed() -> None:
    # Four sequences: 0 and 1 show list A (one 1x2x4 image: 8 patches, 2 tokens at merge 2), 2 shows
    # list B (two images: 1x2x2 = 1 token, 1x4x4 = 4 tokens), 3 shows A again.
    pix, thw = _images([(1, 2, 4), (1, 2, 4), (1, 2, 2), (1, 4, 4), (1, 2, 4)])
    d = distinct_images(pix, thw, images_per_seq=[1, 1, 2, 1], image_source=[7, 7, 3, 7], merge=2)
    assert d is not None
    # Encoded: A (from sequence 0), then B's two images (from sequence 2).
    assert d.grid_thw.tolist() == [[1, 2, 4], [1, 2, 2], [1, 4, 4]]
    assert d.pixel_values[:, 0].tolist() == [0.0] * 8 + [2.0] * 4 + [3.0] * 16
    # Tower output rows: A = 0-1, B = 2 and 3-6. Sequences in order: A, A, B, A.
    assert d.rows.tolist() == [0, 1, 0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_no_repeats_nothing_to_do() -> None:
    pix, thw = _images([(1, 2, 2), (1, 2, 2)])
    assert distinct_images(pix, thw, [1, 1], [0, 1], merge=2) is None


def test_pack_unpack_round_trip_and_gradient() -> None:
    attn = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    hidden = torch.randn(3, 4, 5)
    packed = pack(hidden, attn).requires_grad_()
    assert packed.shape == (1, 9, 5)
    out = unpack(packed, attn)
    torch.testing.assert_close(out, hidden * attn[..., None])
    (out * torch.arange(1.0, 5.0)[None, :, None]).sum().backward()
    assert packed.grad is not None
    # Each packed token's gradient is its padded position's weight (1-based column).
    assert packed.grad[0, :, 0].tolist() == [1, 2, 3, 1, 2, 1, 2, 3, 4]


def test_packed_positions_restart_per_sequence() -> None:
    ids = torch.tensor([[5, 9, 9, 6, 0], [5, 6, 7, 0, 0]])
    attn = (ids != 0).long()

    def rope_index(input_ids, mm_token_type_ids, image_grid_thw, attention_mask):  # noqa: ANN001, ANN202
        # A stand-in for get_rope_index: (t, h, w) = 10 * row + column, 100 + ..., 200 + ...
        assert mm_token_type_ids.tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
        base = 10 * torch.arange(2)[:, None] + torch.arange(5)[None]
        return torch.stack([base, 100 + base, 200 + base]), None

    pos = packed_position_ids(rope_index, ids, attn, torch.zeros(1, 3, dtype=torch.long), image_token_id=9)
    assert pos.shape == (4, 1, 7)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert pos[1, 0].tolist() == [0, 1, 2, 3, 10, 11, 12]
    assert pos[3, 0].tolist() == [200, 201, 202, 203, 210, 211, 212]
