"""RewardManager: weighting, sub-score names, and isolation of failing user functions."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rl_vlm.config import RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import RewardManager

GOOD = "<think>t</think><answer>circle</answer>"
WRONG = "<think>t</think><answer>square</answer>"
NO_FORMAT = "circle"
ROW = {"problem": "What shape?", "answer": "circle"}

USER_FILE = '''
def flaky(response, row):
    if "boom" in response:
        raise RuntimeError("user bug")
    return 1.0

def detailed(response, row, bonus=0.0):
    return {"score": 0.5 + bonus, "length": float(len(response))}

def nan(response, row):
    return float("nan")

def no_score(response, row):
    return {"value": 1.0}
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    f = tmp_path / "user_rewards.py"
    f.write_text(USER_FILE)
    return f


def test_default_weights_and_sub_scores() -> None:
    mgr = RewardManager(RewardConfig())  # 0.1 format + 0.9 accuracy
    res = mgr.score([GOOD, WRONG, NO_FORMAT], [ROW] * 3)
    torch.testing.assert_close(res.sub_scores["format"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(res.sub_scores["accuracy"], torch.tensor([1.0, 0.0, 0.0]))
    # 0.1 * 1 + 0.9 * 1 = 1.0; 0.1 * 1 + 0.9 * 0 = 0.1; "circle" without tags scores nothing.
    torch.testing.assert_close(res.overall, torch.tensor([1.0, 0.1, 0.0]))
    assert res.overall.dtype == torch.float32 and set(res.sub_scores) == {"format", "accuracy"}
    assert res.num_errors == 0


def test_dict_rewards_give_named_sub_scores_and_kwargs_pass_through(user_file: Path) -> None:
    spec = f"{user_file}:detailed"
    cfg = RewardConfig(functions=(RewardFunctionConfig(name=spec, weight=2.0, kwargs={"bonus": 0.25}),
                                  RewardFunctionConfig(name="format", weight=1.0)))
    res = RewardManager(cfg).score([GOOD, "ab"], [ROW, ROW])
    assert set(res.sub_scores) == {spec, f"{spec}/length", "format"}
    torch.testing.assert_close(res.sub_scores[spec], torch.tensor([0.75, 0.75]))
    torch.testing.assert_close(res.sub_scores[f"{spec}/length"], torch.tensor([float(len(GOOD)), 2.0]))
    # Only "score" is weighted: 2 * 0.75 + 1 * format.
    torch.testing.assert_close(res.overall, torch.tensor([2.5, 1.5]))


def test_raising_user_function_scores_zero_and_is_counted(user_file: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    spec = f"{user_file}:flaky"
    cfg = RewardConfig(functions=(RewardFunctionConfig(name=spec, weight=0.5),
                                  RewardFunctionConfig(name="accuracy", weight=1.0)))
    mgr = RewardManager(cfg)
    responses = [GOOD, GOOD + " boom", WRONG + " boom"]
    with caplog.at_level(logging.ERROR, logger="rl_vlm.rewards"):
        res = mgr.score(responses, [ROW] * 3)
        res2 = mgr.score(responses, [ROW] * 3)
    torch.testing.assert_close(res.sub_scores[spec], torch.tensor([1.0, 0.0, 0.0]))
    # The other function still scores every sample, the failing ones included.
    torch.testing.assert_close(res.sub_scores["accuracy"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(res.overall, torch.tensor([1.5, 1.0, 0.0]))
    assert res.num_errors == 2 and res2.num_errors == 2
    # The first traceback is logged once, not once per failure or per step.
    records = [r for r in caplog.records if r.name == "rl_vlm.rewards"]
    assert len(records) == 1
    assert "RuntimeError: user bug" in records[0].getMessage() and "flaky" in records[0].getMessage()


@pytest.mark.parametrize("fn", ["nan", "no_score"])
def test_invalid_return_values_are_errors(user_file: Path, fn: str) -> None:
    cfg = RewardConfig(functions=(RewardFunctionConfig(name=f"{user_file}:{fn}"),
                                  RewardFunctionConfig(name="format", weight=1.0)))
    res = RewardManager(cfg).score([GOOD], [ROW])
    assert res.num_errors == 1
    assert res.overall.tolist() == [1.0]


def test_configuration_errors_surface_at_construction(user_file: Path) -> None:
    with pytest.raises(ValueError, match="typo"):
        RewardManager(RewardConfig(functions=(RewardFunctionConfig(name="format", kwargs={"typo": 1}),)))
    with pytest.raises(ValueError, match="more than once"):
        RewardManager(RewardConfig(functions=(RewardFunctionConfig(name="format"),
                                              RewardFunctionConfig(name="format"))))
    with pytest.raises(ValueError, match="unknown reward function 'formatt'"):
        RewardManager(RewardConfig(functions=(RewardFunctionConfig(name="formatt"),)))


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 responses but 1 rows"):
        RewardManager(RewardConfig()).score([GOOD, GOOD], [ROW])


def test_rows_are_not_mutated_by_user_functions(tmp_path: Path) -> None:
    f = tmp_path / "mut.py"
    f.write_text("def mut(response, row):\n    row['answer'] = 'x'\n    return 0.0\n")
    row = dict(ROW)
    RewardManager(RewardConfig(functions=(RewardFunctionConfig(name=f"{f}:mut"),))).score([GOOD], [row])
    assert row == ROW
