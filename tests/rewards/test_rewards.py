"""The built-in rule-based rewards (algorithms.md §7) and the reward registry/resolver."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rl_vlm.rewards import (
    REWARDS,
    accuracy_reward,
    format_reward,
    register_reward,
    resolve_reward,
)
from rl_vlm.rewards.accuracy import extract_answer, math_equal, normalize_text


# ----------------------------------------------------------------------------- format
@pytest.mark.parametrize("response", [
    "<think>look at the image</think><answer>circle</answer>",
    "  \n<think>a\nb</think>\n\n<answer>\n42\n</answer>\n ",   # surrounding whitespace is stripped
    "<think></think> <answer></answer>",                       # empty blocks still have the format
])
def test_format_valid(response: str) -> None:
    assert format_reward(response, {}) == 1.0


@pytest.mark.parametrize("response", [
    "",
    "circle",
    "<answer>circle</answer>",                                  # no think block
    "<answer>1</answer><think>x</think>",                       # wrong order
    "I think <think>x</think><answer>1</answer>",               # text before
    "<think>x</think><answer>1</answer> so the answer is 1",    # text after
    "<think>x</think> between <answer>1</answer>",              # text between
    "<think>x</think><answer>1",                                # unclosed answer
    "<think>x<answer>1</answer>",                               # unclosed think
])
def test_format_invalid(response: str) -> None:
    assert format_reward(response, {}) == 0.0


# ----------------------------------------------------------------------------- accuracy
def acc(answer_content: str, gt: object) -> float:
    return accuracy_reward(f"<think>t</think><answer>{answer_content}</answer>", {"answer": gt})


@pytest.mark.parametrize("pred, gt", [
    ("circle", "circle"),
    ("The Circle.", "circle"),           # case, article, end punctuation
    ("  a  red   circle ", "red circle"),  # whitespace collapsed, article dropped
    ("Yes!", "yes"),
    ("'blue'", "blue"),
    ("7", 7),                            # non-string ground truths are compared as text
])
def test_accuracy_normalised_exact_match(pred: str, gt: object) -> None:
    assert acc(pred, gt) == 1.0


@pytest.mark.parametrize("pred, gt", [
    ("square", "circle"),
    ("red circle", "blue circle"),
    ("-3", "3"),                         # signs are not punctuation to strip
    ("circles", "circle"),               # no fuzzy or substring matching
    ("it is a circle", "circle"),
    ("act", "cat"),                      # words never go through symbolic comparison
])
def test_accuracy_mismatch(pred: str, gt: str) -> None:
    assert acc(pred, gt) == 0.0


@pytest.mark.parametrize("pred", ["B", "(B)", "B.", "B)", "b", "(B) 12 apples", "B. twelve", "B: 12"])
@pytest.mark.parametrize("gt", ["B", "(B)", "B."])
def test_accuracy_multiple_choice_match(pred: str, gt: str) -> None:
    assert acc(pred, gt) == 1.0


@pytest.mark.parametrize("pred, gt", [
    ("C", "B"), ("(C) 12", "B"), ("B and C", "B"), ("B, C", "B"), ("Bx", "B"),
    ("A cat", "A"),                       # "A cat" is not option A: option text needs a delimiter
    ("the answer is B", "B"),
])
def test_accuracy_multiple_choice_mismatch(pred: str, gt: str) -> None:
    assert acc(pred, gt) == 0.0


def test_accuracy_option_a_is_not_mistaken_for_an_article() -> None:
    assert acc("A", "A") == 1.0 and acc("a", "A") == 1.0 and acc("(A) 3", "(A)") == 1.0
    assert acc("the", "A") == 0.0


@pytest.mark.parametrize("pred, gt", [
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{1}{2}", "0.5"),
    ("1/2", "0.5"),
    ("$\\frac{1}{2}$", "0.5"),
    ("1000", "1,000"),
    ("\\sqrt{4}", "2"),
    ("2.0", "2"),
    ("x^2+1", "1+x^2"),
    ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}"),
])
def test_accuracy_math_equivalence(pred: str, gt: str) -> None:
    assert acc(pred, gt) == 1.0


@pytest.mark.parametrize("pred, gt", [
    ("13", "12"),
    ("2x", "2"),
    ("2 or 3", "3"),        # parsed as a whole ({2, 3}), not "the last number"
    ("circle 2", "2"),
    ("0.49", "\\frac{1}{2}"),
])
def test_accuracy_math_mismatch(pred: str, gt: str) -> None:
    assert acc(pred, gt) == 0.0


@pytest.mark.parametrize("response, expected", [
    ("5", None),                                                   # no tags
    ("<answer>5", None),                                           # unclosed
    ("5</answer>", None),
    ("<answer>3</answer> wait <answer>5</answer>", "5"),           # last pair wins
    ("<answer>3 <answer>5</answer>", "5"),                         # unclosed opener, then a pair
    ("<answer>\n 5 \n</answer>", "5"),
    ("<answer></answer>", ""),
])
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_accuracy_malformed_outputs() -> None:
    row = {"answer": "5"}
    assert accuracy_reward("the answer is 5", row) == 0.0
    assert accuracy_reward("<think>x</think><answer>5", row) == 0.0
    assert accuracy_reward("<answer></answer>", row) == 0.0
    assert accuracy_reward("<answer>3</answer><answer>5</answer>", row) == 1.0
    assert accuracy_reward("<answer>5</answer><answer>3</answer>", row) == 0.0
    assert accuracy_reward("<answer>5</answer>", {"answer": ""}) == 0.0


def test_accuracy_requires_the_answer_field() -> None:
    with pytest.raises(KeyError):
        accuracy_reward("<answer>5</answer>", {"problem": "?"})


def test_normalize_text() -> None:
    assert normalize_text("  The  Big, red   Apple. ") == "big, red apple"


def test_math_equal_works_off_the_main_thread() -> None:
    # math_verify's SIGALRM timeouts raise outside the main thread; they must be switched off there.
    result: list[bool] = []
    th = threading.Thread(target=lambda: result.append(math_equal("0.5", "\\frac{1}{2}")))
    th.start()
    th.join()
    assert result == [True]


# ----------------------------------------------------------------------------- registry / resolver
def test_builtins_are_registered() -> None:
    assert resolve_reward("format") is format_reward
    assert resolve_reward("accuracy") is accuracy_reward


def test_resolve_module_spec() -> None:
    assert resolve_reward("rl_vlm.rewards.format:format_reward") is format_reward


def test_resolve_file_spec(tmp_path: Path) -> None:
    f = tmp_path / "my_rewards.py"
    f.write_text("def length(response, row):\n    return float(len(response))\n")
    fn = resolve_reward(f"{f}:length")
    assert fn("abc", {}) == 3.0
    assert resolve_reward(f"{f}:length") is fn  # the file is imported once


@pytest.mark.parametrize("spec, message", [
    ("acuracy", "unknown reward function 'acuracy'; registered: .*'accuracy'"),
    ("no_such_dir/r.py:fn", "no_such_dir/r.py:fn.*does not exist"),
    ("rl_vlm.rewards.format:nope", "rl_vlm.rewards.format:nope.*no attribute 'nope'"),
    ("rl_vlm.no_such_module:fn", "rl_vlm.no_such_module:fn.*cannot import"),
    ("rl_vlm.rewards.format:FORMAT_PATTERN", "not callable"),
])
def test_resolve_errors_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_reward(spec)


def test_register_reward() -> None:
    try:
        @register_reward("test_const")
        def const(response: str, row: dict) -> float:
            return 0.25

        assert resolve_reward("test_const") is const
        with pytest.raises(ValueError, match="already registered"):
            register_reward("format")(const)
    finally:
        REWARDS.pop("test_const", None)
