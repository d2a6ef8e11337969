"""Grounding IoU reward against hand-computed boxes."""

from __future__ import annotations

import pytest

from rl_vlm.config import RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import REWARDS
from rl_vlm.rewards.grounding import box_iou, iou_reward, parse_box
from rl_vlm.rewards.manager import RewardManager


def test_box_iou_by_hand() -> None:
    # [0,0,10,10] vs [5,5,15,15]: overlap 5x5 = 25, union 100 + 100 - 25 = 175.
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0       # touching edges: no overlap
    assert box_iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(4 / 100)  # contained
    assert box_iou([5, 5, 5, 9], [0, 0, 10, 10]) == 0.0           # degenerate box


def test_parse_box_formats() -> None:
    assert parse_box('{"bbox_2d": [12, 30, 40.5, 88]}') == (12.0, 30.0, 40.5, 88.0)
    assert parse_box("the box is [ 1 ,2, 3,4 ] and [5,6,7,8]") == (1.0, 2.0, 3.0, 4.0)
    assert parse_box("[1, 2, 3]") is None and parse_box("no box") is None


def test_iou_reward_continuous_and_thresholded() -> None:
    resp = "<think>the cat is top left</think><answer>[0, 0, 10, 10]</answer>"
    row = {"answer": "[5, 5, 15, 15]"}
    assert iou_reward(resp, row) == pytest.approx(25 / 175)
    assert iou_reward(resp, row, threshold=0.1) == 1.0
    assert iou_reward(resp, row, threshold=0.5) == 0.0
    assert iou_reward(resp, {"bbox": [0, 0, 10, 10], "answer": "cat"}) == 1.0
    assert iou_reward("<answer>no box here</answer>", row) == 0.0
    assert iou_reward("[0, 0, 10, 10]", row) == 0.0  # box outside an answer tag does not count
    # The last complete <answer> is the one scored.
    assert iou_reward("<answer>[0,0,1,1]</answer><answer>[5,5,15,15]</answer>", row) == 1.0


def test_iou_in_the_reward_manager() -> None:
    assert REWARDS["iou"] is iou_reward
    mgr = RewardManager(RewardConfig(functions=(RewardFunctionConfig(name="iou", weight=1.0,
                                                                     kwargs={"threshold": 0.5}),)))
    out = mgr.score(["<answer>[0,0,10,10]</answer>", "<answer>[0,0,10,10]</answer>"],
                    [{"bbox": [0, 0, 10, 9]}, {"answer": "no box"}])
    assert out.overall.tolist() == [1.0, 0.0]
    assert out.num_errors == 1  # the second row has no ground-truth box
