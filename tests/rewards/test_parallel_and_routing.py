"""RewardManager through worker processes (timeouts, crashes, user sub-scores) and per-task routing."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from rl_vlm.compose import compose
from rl_vlm.config import ConfigError, RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import RewardManager

GOOD = "<think>t</think><answer>circle</answer>"
ROW = {"problem": "What shape?", "answer": "circle"}

USER_FILE = '''
import os
import time

def parts(response, row):
    """Named sub-scores: only "score" is weighted, the rest are logged."""
    return {"score": 1.0 if row["answer"] in response else 0.0, "length": float(len(response))}

def flaky(response, row):
    if "boom" in response:
        raise RuntimeError("user bug")
    return 1.0

def hang(response, row):
    if "hang" in response:
        time.sleep(60)
    return 1.0

def die(response, row):
    if "die" in response:
        os._exit(3)
    return 1.0
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    f = tmp_path / "user_rewards.py"
    f.write_text(USER_FILE)
    return f


def fcfg(name: str, weight: float = 1.0, **kwargs: object) -> RewardFunctionConfig:
    return RewardFunctionConfig(name=name, weight=weight, kwargs=dict(kwargs))


def test_user_file_function_with_sub_scores_in_workers(user_file: Path) -> None:
    spec = f"{user_file}:parts"
    mgr = RewardManager(RewardConfig(functions=(fcfg(spec, 2.0), fcfg("format", 0.5)), num_workers=2))
    try:
        res = mgr.score([GOOD, "square"], [ROW, ROW])
    finally:
        mgr.close()
    torch.testing.assert_close(res.sub_scores[spec], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(res.sub_scores[f"{spec}/length"], torch.tensor([float(len(GOOD)), 6.0]))
    torch.testing.assert_close(res.overall, torch.tensor([2.5, 0.0]))
    assert res.num_errors == 0 and res.errors == {}


def test_workers_agree_with_the_serial_path(user_file: Path) -> None:
    fns = (fcfg("format", 0.1), fcfg("accuracy", 0.9), fcfg(f"{user_file}:parts", 1.0))
    responses = [GOOD, "circle", "<think>a</think><answer>square</answer>", "<answer>0.5</answer>"] * 3
    rows = [ROW, ROW, ROW, {"answer": "\\frac{1}{2}"}] * 3
    serial = RewardManager(RewardConfig(functions=fns)).score(responses, rows)
    mgr = RewardManager(RewardConfig(functions=fns, num_workers=2))
    try:
        parallel = mgr.score(responses, rows)
        again = mgr.score(responses, rows)  # the pool is reused
    finally:
        mgr.close()
    for res in (parallel, again):
        torch.testing.assert_close(res.overall, serial.overall)
        assert res.sub_scores.keys() == serial.sub_scores.keys()
        for k in serial.sub_scores:
            torch.testing.assert_close(res.sub_scores[k], serial.sub_scores[k])


def test_raising_and_hanging_functions_in_the_pool(user_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    flaky, hang = f"{user_file}:flaky", f"{user_file}:hang"
    cfg = RewardConfig(functions=(fcfg(flaky, 1.0), fcfg(hang, 1.0), fcfg("format", 0.5)),
                       num_workers=2, timeout_s=1.5)
    mgr = RewardManager(cfg)
    responses = [GOOD, GOOD + " boom", GOOD + " hang", GOOD + " hang boom", GOOD]
    try:
        mgr.score([GOOD], [ROW])  # start the workers outside the timed call
        with caplog.at_level(logging.ERROR, logger="rl_vlm.rewards"):
            t0 = time.monotonic()
            res = mgr.score(responses, [ROW] * 5)
            elapsed = time.monotonic() - t0
            res2 = mgr.score(responses, [ROW] * 5)  # the replaced workers serve the next batch
        restarts = mgr._pool.num_restarts if mgr._pool else -1
    finally:
        mgr.close()
    # Two hangs on two workers: about one timeout (they run in parallel), far below the 60 s sleep.
    print(f"hanging batch scored in {elapsed:.2f} s")
    assert elapsed < 10, elapsed
    torch.testing.assert_close(res.sub_scores[flaky], torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(res.sub_scores[hang], torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))
    # format runs after the hanging function in the same task; it is re-queued, not lost.
    torch.testing.assert_close(res.sub_scores["format"], torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(res.overall, torch.tensor([2.5, 1.0, 1.0, 0.0, 2.5]))
    assert res.num_errors == 4 and res.errors == {flaky: 2, hang: 2}
    assert res2.num_errors == 4 and res2.sub_scores[hang].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert restarts == 4
    records = [r.getMessage() for r in caplog.records if r.name == "rl_vlm.rewards"]
    assert len(records) == 2  # one traceback per function, not per failure or per step
    assert any("RuntimeError: user bug" in m for m in records)
    assert any("TimeoutError" in m and "hang" in m for m in records)


def test_dying_worker_is_replaced(user_file: Path) -> None:
    die = f"{user_file}:die"
    mgr = RewardManager(RewardConfig(functions=(fcfg(die),), num_workers=1, timeout_s=5))
    try:
        res = mgr.score([GOOD, "die", GOOD], [ROW] * 3)
    finally:
        mgr.close()
    assert res.sub_scores[die].tolist() == [1.0, 0.0, 1.0] and res.num_errors == 1


def test_runtime_registered_function_reaches_workers() -> None:
    # rl_vlm.rewards.format:format_reward is a module spec; the worker resolves it itself.
    mgr = RewardManager(RewardConfig(functions=(fcfg("rl_vlm.rewards.format:format_reward"),), num_workers=1))
    try:
        assert mgr.score([GOOD, "x"], [ROW, ROW]).overall.tolist() == [1.0, 0.0]
    finally:
        mgr.close()


# ----------------------------------------------------------------------------- response lengths
def test_response_lengths_reach_the_overlong_reward() -> None:
    cfg = RewardConfig(functions=(fcfg("accuracy", 1.0), fcfg("overlong", 1.0, max_length=100, buffer=40)))
    mgr = RewardManager(cfg)
    res = mgr.score([GOOD, GOOD, GOOD], [ROW] * 3, response_lengths=[10, 80, 100])
    torch.testing.assert_close(res.sub_scores["overlong"], torch.tensor([0.0, -0.5, -1.0]))
    torch.testing.assert_close(res.overall, torch.tensor([1.0, 0.5, 0.0]))
    # Without lengths (today's driver) the token unit cannot work: counted errors, scored 0.
    res = mgr.score([GOOD], [ROW])
    assert res.num_errors == 1 and res.errors == {"overlong": 1} and res.overall.tolist() == [1.0]
    with pytest.raises(ValueError, match="response_lengths"):
        mgr.score([GOOD], [ROW], response_lengths=[1, 2])


def test_key_lets_one_function_appear_twice() -> None:
    cfg = RewardConfig(functions=(RewardFunctionConfig(name="format", weight=1.0),
                                  RewardFunctionConfig(name="format", weight=0.0, key="format_lenient",
                                                       kwargs={"strict": False})))
    res = RewardManager(cfg).score(["hi <think>a</think><answer>b</answer>"], [ROW])
    assert res.sub_scores["format"].tolist() == [0.0] and res.sub_scores["format_lenient"].tolist() == [1.0]


# ----------------------------------------------------------------------------- per-task routing
MIXED = RewardConfig(
    functions=(fcfg("format", 0.5), fcfg("accuracy", 1.0)),
    by_task={
        "yes_no": (fcfg("exact_match"),),
        "grounding": (RewardFunctionConfig(name="iou", key="accuracy", kwargs={"threshold": 0.5}),
                      RewardFunctionConfig(name="iou", weight=0.0)),
        "math": (fcfg("math", 1.0),),
    },
)


def wrap(answer: str) -> str:
    return f"<think>t</think><answer>{answer}</answer>"


def test_rows_are_routed_by_reward_then_task_then_default() -> None:
    rows = [
        {"answer": "yes", "task": "yes_no"},                              # task names a set
        {"answer": "[0, 0, 10, 10]", "task": "grounding"},
        {"answer": "\\frac{1}{2}", "task": "counting", "reward": "math"},  # reward wins over task
        {"answer": "circle", "task": "shapes"},                            # task not a set: default
        {"answer": "circle"},                                              # no fields: default
    ]
    responses = [wrap("Yes"), wrap("[0, 0, 10, 8]"), wrap("0.5"), wrap("circle"), "circle"]
    res = RewardManager(MIXED).score(responses, rows)
    torch.testing.assert_close(res.overall, torch.tensor([1.0, 1.0, 1.0, 1.5, 0.0]))
    assert set(res.sub_scores) == {"format", "accuracy", "exact_match", "iou", "math"}
    # "accuracy" is the accuracy function of every set that logs under that key.
    torch.testing.assert_close(res.sub_scores["accuracy"], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(res.sub_scores["iou"], torch.tensor([0.0, 0.8, 0.0, 0.0, 0.0]))
    assert res.present["accuracy"].tolist() == [False, True, False, True, True]
    assert res.present["math"].tolist() == [False, False, True, False, False]
    assert res.present["format"].tolist() == [False, False, False, True, True]
    assert res.num_errors == 0


def test_unknown_reward_field_scores_zero_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    mgr = RewardManager(MIXED)
    with caplog.at_level(logging.ERROR, logger="rl_vlm.rewards"):
        res = mgr.score([GOOD, GOOD, GOOD], [ROW, {**ROW, "reward": "mth"}, {**ROW, "reward": "mth"}])
    assert res.overall.tolist() == [1.5, 0.0, 0.0] and res.errors == {"routing": 2}
    assert sum("'mth'" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="row 1: .*'mth'"):
        mgr.check_rows([ROW, {**ROW, "reward": "mth"}])


def test_routing_through_workers_matches_serial() -> None:
    rows = [{"answer": "yes", "task": "yes_no"}, {"answer": "[0, 0, 10, 10]", "reward": "grounding"}, ROW]
    responses = [wrap("no"), wrap("[0, 0, 10, 10]"), GOOD]
    serial = RewardManager(MIXED).score(responses, rows)
    mgr = RewardManager(RewardConfig(functions=MIXED.functions, by_task=MIXED.by_task, num_workers=2))
    try:
        par = mgr.score(responses, rows)
    finally:
        mgr.close()
    torch.testing.assert_close(par.overall, serial.overall)
    assert par.overall.tolist() == [0.0, 1.0, 1.5]


def test_mixed_tasks_yaml_composes_and_builds() -> None:
    cfg = compose(["reward=mixed_tasks", "reward.num_workers=0"]).reward
    assert set(cfg.by_task) == {"yes_no", "multiple_choice", "math", "grounding"}
    assert cfg.by_task["grounding"][2] == RewardFunctionConfig(name="iou", weight=0.0, key="iou")
    mgr = RewardManager(cfg)
    res = mgr.score([wrap("B. cat"), wrap("3 cm")],
                    [{"answer": "B", "options": ["dog", "cat"], "task": "multiple_choice"},
                     {"answer": "3", "reward": "math"}])
    torch.testing.assert_close(res.overall, torch.tensor([1.0, 1.0]))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'reward\.by_task\.math\[0\]\.nme'"):
        RewardConfig(by_task={"math": [{"nme": "math"}]})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="reward.timeout_s"):
        RewardConfig(timeout_s=0)
    with pytest.raises(ConfigError, match="reward.num_workers"):
        RewardConfig(num_workers=-1)
    with pytest.raises(ValueError, match=r"reward\.by_task\.g: \['iou'\] configured more than once"):
        RewardManager(RewardConfig(by_task={"g": (fcfg("iou"), fcfg("iou"))}))
    with pytest.raises(ValueError, match="filled in by the manager"):
        RewardManager(RewardConfig(functions=(fcfg("overlong", max_length=1, buffer=1, response_length=3),)))
