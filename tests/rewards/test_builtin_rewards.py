"""The added built-ins: lenient format, math (math-verify, units), exact match, multiple choice, overlong."""

from __future__ import annotations

import pytest

from rl_vlm.rewards import REWARDS
from rl_vlm.rewards.accuracy import (
    accuracy_reward,
    exact_match_reward,
    last_boxed,
    math_reward,
    multiple_choice_reward,
    strip_units,
)
from rl_vlm.rewards.format import format_reward
from rl_vlm.rewards.length import overlong_reward


def wrap(answer: str) -> str:
    return f"<think>t</think><answer>{answer}</answer>"


def test_registry_names() -> None:
    assert {"format", "accuracy", "exact_match", "math", "multiple_choice", "iou", "overlong"} <= set(REWARDS)


# ----------------------------------------------------------------------------- format
@pytest.mark.parametrize("response, strict, lenient", [
    ("<think>x</think><answer>1</answer>", 1.0, 1.0),
    ("Sure! <think>x</think>\n<answer>1</answer> Done.", 0.0, 1.0),   # text around: lenient only
    ("<think>x</think> between <answer>1</answer>", 0.0, 0.0),         # text between: neither
    ("<answer>1</answer><think>x</think>", 0.0, 0.0),                  # wrong order
    ("<think>x</think><answer>1", 0.0, 0.0),                            # unclosed answer
    ("<think>x<answer>1</answer>", 0.0, 0.0),                           # unclosed think
    ("no tags at all", 0.0, 0.0),
    ("", 0.0, 0.0),
])
def test_format_strict_and_lenient(response: str, strict: float, lenient: float) -> None:
    assert format_reward(response, {}) == strict
    assert format_reward(response, {}, strict=True) == strict
    assert format_reward(response, {}, strict=False) == lenient


# ----------------------------------------------------------------------------- math
@pytest.mark.parametrize("pred, gt", [
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "0.5"),
    ("\\tfrac12", "0.5"),
    ("3 cm", "3"),
    ("3cm", "3"),
    ("3", "3 cm"),
    ("5\\,\\text{kg}", "5"),
    ("12 m^2", "12"),
    ("90^\\circ", "90"),
    ("90°", "90"),
    ("50\\%", "50"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("$\\frac{3}{4}$", "0.75"),
    ("\\boxed{7}", "7"),                       # a box inside the answer: its content is used
    ("x = 5", "x = 5"),                         # normalised exact match
])
def test_math_equivalences(pred: str, gt: str) -> None:
    assert math_reward(wrap(pred), {"answer": gt}) == 1.0


@pytest.mark.parametrize("pred, gt", [
    ("0.49", "\\frac{1}{2}"),
    ("13", "12"),
    ("2 or 3", "3"),
    ("\\sqrt{7}", "2\\sqrt{2}"),
    ("\\boxed{", "1"),         # garbage box
    ("", "1"),                 # empty answer
])
def test_math_mismatches(pred: str, gt: str) -> None:
    assert math_reward(wrap(pred), {"answer": gt}) == 0.0


@pytest.mark.parametrize("response, expected", [
    ("the answer is \\boxed{\\frac{1}{2}}", 1.0),         # no <answer>: last \boxed{} of the response
    ("\\boxed{3} no wait \\boxed{0.5}", 1.0),             # the LAST box
    ("\\boxed{0.5} no wait \\boxed{3}", 0.0),
    ("the answer is 0.5", 0.0),                            # no tags, no box
    ("<answer>0.5", 0.0),                                   # unclosed tag
    ("<think>t</think><answer></answer>", 0.0),            # empty answer
    ("\\boxed{0.5", 0.0),                                   # unbalanced box
])
def test_math_malformed_outputs(response: str, expected: float) -> None:
    assert math_reward(response, {"answer": "\\frac{1}{2}"}) == expected


def test_accuracy_also_strips_units() -> None:
    assert accuracy_reward(wrap("3 cm"), {"answer": "3"}) == 1.0
    assert accuracy_reward(wrap("90°"), {"answer": "90"}) == 1.0


@pytest.mark.parametrize("text, expected", [
    ("3 cm", "3"), ("12 m^2", "12"), ("5\\,\\text{kg}", "5"), ("7 square feet", "7"), ("90°", "90"),
    ("50\\%", "50"), ("2m", "2m"), ("x", "x"), ("10 apples", "10 apples"), ("\\frac{1}{2}", "\\frac{1}{2}"),
])
def test_strip_units(text: str, expected: str) -> None:
    assert strip_units(text) == expected


def test_last_boxed() -> None:
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{1") is None and last_boxed("none") is None


# ----------------------------------------------------------------------------- exact match
@pytest.mark.parametrize("pred, gt, expected", [
    ("Yes.", "yes", 1.0), ("The Red Car", "red car", 1.0), ("no", "yes", 0.0),
    ("cats", "cat", 0.0), ("two", ["2", "two"], 1.0), ("3", ["2", "two"], 0.0), ("", "yes", 0.0),
])
def test_exact_match(pred: str, gt: object, expected: float) -> None:
    assert exact_match_reward(wrap(pred), {"answer": gt}) == expected


def test_exact_match_needs_tags() -> None:
    assert exact_match_reward("yes", {"answer": "yes"}) == 0.0


# ----------------------------------------------------------------------------- multiple choice
OPTIONS = ["dog", "cat", "bird"]


@pytest.mark.parametrize("pred", ["B", "(B)", "B.", "b", "B. cat", "(B) cat", "cat", "Cat."])
@pytest.mark.parametrize("gt", ["B", "(B)", "cat"])
def test_multiple_choice_match(pred: str, gt: str) -> None:
    assert multiple_choice_reward(wrap(pred), {"answer": gt, "options": OPTIONS}) == 1.0


@pytest.mark.parametrize("pred", ["A", "dog", "B, C", "B and C", "the answer is B", "", "cats"])
def test_multiple_choice_mismatch(pred: str) -> None:
    assert multiple_choice_reward(wrap(pred), {"answer": "B", "options": OPTIONS}) == 0.0


def test_multiple_choice_mapping_options_and_letters_without_options() -> None:
    row = {"answer": "C", "options": {"A": "red", "B": "green", "C": "blue"}}
    assert multiple_choice_reward(wrap("blue"), row) == 1.0
    assert multiple_choice_reward(wrap("(C)"), {"answer": "C"}) == 1.0
    assert multiple_choice_reward(wrap("blue"), {"answer": "C"}) == 0.0  # no options: text cannot match
    assert multiple_choice_reward(wrap("C"), {"answer": "C"}) == 1.0
    assert multiple_choice_reward("C", {"answer": "C"}) == 0.0  # no tags


def test_multiple_choice_needs_an_option_ground_truth() -> None:
    with pytest.raises(ValueError, match="neither an option letter"):
        multiple_choice_reward(wrap("B"), {"answer": "fish", "options": OPTIONS})


# ----------------------------------------------------------------------------- overlong (DAPO)
@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (60, 0.0), (61, -0.025), (80, -0.5), (100, -1.0), (130, -1.0),
])
def test_overlong_tokens(length: int, expected: float) -> None:
    # max 100, buffer 40: the ramp starts after 60 tokens and reaches -penalty at 100.
    assert overlong_reward("x", {}, max_length=100, buffer=40, response_length=length) == pytest.approx(expected)


def test_overlong_penalty_factor_and_chars() -> None:
    assert overlong_reward("x", {}, 100, 40, penalty=0.5, response_length=80) == pytest.approx(-0.25)
    assert overlong_reward("y" * 90, {}, 100, 40, unit="chars") == pytest.approx(-0.75)


def test_overlong_needs_lengths_in_tokens_mode() -> None:
    with pytest.raises(ValueError, match="response_lengths"):
        overlong_reward("x", {}, max_length=100, buffer=40)
    with pytest.raises(ValueError, match="buffer"):
        overlong_reward("x", {}, max_length=100, buffer=0, response_length=3)
