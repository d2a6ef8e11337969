"""Curr-ReFT stage rewards (algorithms.md §6.1) against hand-written cases."""

from __future__ import annotations

import pytest

from rl_vlm.rewards import REWARDS
from rl_vlm.rewards.judgement import jaccard_reward, judgement, yes_no_reward


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes", "yes"), ("TRUE.", "yes"), ("that is correct", "yes"), ("No", "no"), ("false", "no"),
    ("incorrect", "no"), ("maybe", None), ("yesterday", None), ("", None),
])
def test_judgement_maps_whole_words(text: str, expected: str | None) -> None:
    assert judgement(text) == expected


@pytest.mark.parametrize(("response", "answer", "score"), [
    ("<think>.</think><answer>yes</answer>", "yes", 1.0),
    ("<think>.</think><answer>True</answer>", "Yes", 1.0),
    ("<think>.</think><answer>incorrect</answer>", "no", 1.0),
    ("<think>.</think><answer>no</answer>", "yes", 0.0),
    ("<think>.</think><answer>blue</answer>", "yes", 0.0),
    ("yes", "yes", 0.0),                      # no answer tag: 0 (strict, no lenient fall-back)
    ("<think>.</think><answer>yes", "yes", 0.0),  # unclosed tag
])
def test_yes_no_reward(response: str, answer: str, score: float) -> None:
    assert yes_no_reward(response, {"answer": answer}) == score


@pytest.mark.parametrize(("answer_text", "truth", "score"), [
    ("cat, dog", "dog,cat", 1.0),
    ("cat dog bird", "cat, dog", 2 / 3),
    ("cat，fish", ["cat", "dog"], 1 / 3),       # full-width comma; list ground truth
    ("Cat", "cat", 0.0),                      # case-sensitive, as the authors
    ("", "cat", 0.0),
])
def test_jaccard_reward(answer_text: str, truth: object, score: float) -> None:
    response = f"<think>.</think><answer>{answer_text}</answer>"
    assert jaccard_reward(response, {"answer": truth}) == pytest.approx(score)


def test_registered_by_name() -> None:
    assert REWARDS["yes_no"] is yes_no_reward and REWARDS["jaccard"] is jaccard_reward


def test_exact_match_keeps_a_lone_article_as_the_answer() -> None:
    from rl_vlm.rewards.accuracy import exact_match_reward

    assert exact_match_reward("<answer>A</answer>", {"answer": "A"}) == 1.0
    assert exact_match_reward("<answer>A</answer>", {"answer": "B"}) == 0.0
    assert exact_match_reward("<answer>the cat</answer>", {"answer": "cat"}) == 1.0
