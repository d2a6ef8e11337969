"""The reward circuit breaker: N consecutive failures of one function disable it (or stop the run)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rl_vlm.config import ConfigError, RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import REWARDS, RewardManager, register_reward

GOOD = "<think>t</think><answer>circle</answer>"


def resp(tag: str) -> str:
    """A well-formatted response (``format`` scores 1) carrying ``tag`` for the counted function."""
    return f"<think>{tag}</think><answer>circle</answer>"


ROW = {"problem": "What shape?", "answer": "circle"}
CALLS: list[str] = []


@pytest.fixture
def counted() -> Iterator[str]:
    """A registered in-process function that fails on responses containing "boom" (NaN on "nan")
    and records every call."""
    @register_reward("test_breaker_counted")
    def counted_reward(response: str, row: dict) -> float:
        CALLS.append(response)
        if "boom" in response:
            raise RuntimeError(f"user bug on {response!r}")
        return float("nan") if "nan" in response else 1.0

    CALLS.clear()
    try:
        yield "test_breaker_counted"
    finally:
        REWARDS.pop("test_breaker_counted", None)


def manager(name: str, limit: int, mode: str = "disable", **kw: object) -> RewardManager:
    functions = (RewardFunctionConfig(name=name, weight=1.0), RewardFunctionConfig(name="format", weight=0.5))
    return RewardManager(RewardConfig(functions=functions, accuracy_key="format", max_consecutive_errors=limit,
                                      on_repeated_errors=mode, **kw))  # type: ignore[arg-type]


def disabled_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "disabled" in r.getMessage()]


def test_trips_after_exactly_n_consecutive_failures(counted: str, caplog: pytest.LogCaptureFixture) -> None:
    mgr = manager(counted, limit=3)
    with caplog.at_level(logging.WARNING, logger="rl_vlm.rewards"):
        res = mgr.score([resp("boom")] * 5, [ROW] * 5)
    assert len(CALLS) == 3  # the 3rd failure trips; samples 4 and 5 never call it
    assert res.num_disabled == 1 and res.errors == {counted: 3} and res.num_errors == 3
    assert res.sub_scores[counted].tolist() == [0.0] * 5
    assert res.overall.tolist() == [0.5] * 5  # the other function keeps scoring
    assert res.present[counted].all()
    [warning] = disabled_warnings(caplog)
    assert warning == (f"reward function {counted!r} disabled after 3 consecutive failures "
                       "(reward.max_consecutive_errors=3): it scores 0 from now on and is not called again; "
                       f"last error: RuntimeError: user bug on '{resp('boom')}'")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rl_vlm.rewards"):
        res = mgr.score([GOOD] * 4, [ROW] * 4)  # even good responses: it stays disabled
    assert len(CALLS) == 3 and disabled_warnings(caplog) == []
    assert res.num_disabled == 1 and res.num_errors == 0 and res.sub_scores[counted].tolist() == [0.0] * 4


def test_a_success_resets_the_count(counted: str) -> None:
    mgr = manager(counted, limit=3)
    pattern = ["boom", "boom", "ok", "boom", "nan", "ok", "boom", "boom"]  # never 3 in a row
    res = mgr.score([resp(p) for p in pattern], [ROW] * len(pattern))
    assert len(CALLS) == len(pattern) and res.num_disabled == 0 and res.num_errors == 6
    assert mgr.score([resp("ok")], [ROW]).num_disabled == 0  # resets again
    res = mgr.score([resp("boom"), resp("nan"), resp("boom"), resp("ok")], [ROW] * 4)
    # Non-finite scores count as failures: boom, nan, boom trips; the last sample is not called.
    assert res.num_disabled == 1 and len(CALLS) == len(pattern) + 1 + 3


def test_zero_never_trips(counted: str) -> None:
    res = manager(counted, limit=0).score([resp("boom")] * 40, [ROW] * 40)
    assert len(CALLS) == 40 and res.num_disabled == 0 and res.num_errors == 40


def test_stop_raises_naming_the_function_count_and_key(counted: str) -> None:
    mgr = manager(counted, limit=2, mode="stop")
    mgr.score([resp("boom"), GOOD], [ROW] * 2)
    with pytest.raises(RuntimeError) as e:
        mgr.score([resp("boom")] * 4, [ROW] * 4)
    assert str(e.value) == (f"reward function {counted!r} failed 2 times in a row (reward.max_consecutive_errors=2, "
                            f"reward.on_repeated_errors=stop); last error: RuntimeError: user bug on '{resp('boom')}'")
    assert len(CALLS) == 4


def test_one_counter_per_configured_function(counted: str) -> None:
    # The same function in two task sets: each slot has its own count and is disabled on its own.
    fcfg = RewardFunctionConfig(name=counted)
    mgr = RewardManager(RewardConfig(functions=(fcfg,), by_task={"t": (fcfg,)}, accuracy_key=counted,
                                     max_consecutive_errors=2))
    res = mgr.score([resp("boom")] * 3, [ROW, {**ROW, "task": "t"}, ROW])
    assert res.num_disabled == 1 and len(CALLS) == 3
    res = mgr.score([resp("boom"), GOOD], [{**ROW, "task": "t"}, ROW])
    assert res.num_disabled == 2 and len(CALLS) == 4  # the default set's copy stays disabled
    assert mgr.breaker.disabled.keys() == {0, 1}
    assert mgr.breaker.labels[1] == f"{counted!r} in reward.by_task.t"


def test_config_values_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^reward\.max_consecutive_errors: must be >= 0"):
        RewardConfig(max_consecutive_errors=-1)
    with pytest.raises(ConfigError, match=r"^reward\.on_repeated_errors: 'skip' is not one of \['disable', 'stop'\]"):
        RewardConfig(on_repeated_errors="skip")  # type: ignore[arg-type]
    assert RewardConfig().max_consecutive_errors == 16 and RewardConfig().on_repeated_errors == "disable"


HANG_FILE = '''
import time

def hang(response, row):
    time.sleep(60)
    return 1.0
'''


def test_timeouts_stop_costing_time_once_tripped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "hang_rewards.py"
    f.write_text(HANG_FILE)
    timeout, n = 0.3, 8
    mgr = manager(f"{f}:hang", limit=2, num_workers=1, timeout_s=timeout)
    try:
        mgr.score([GOOD], [ROW])  # start the pool (a failure: the count is 1)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="rl_vlm.rewards"):
            res = mgr.score([GOOD] * n, [ROW] * n)
        tripped_s = time.monotonic() - t0
        # One more timeout trips it; the other samples are not sent to the worker for it at all.
        assert res.errors == {f"{f}:hang": 1} and res.num_disabled == 1
        assert res.overall.tolist() == [0.5] * n
        assert tripped_s < (n - 2) * timeout, tripped_s
        assert "TimeoutError" in disabled_warnings(caplog)[0]
        t0 = time.monotonic()
        res = mgr.score([GOOD] * n, [ROW] * n)
        assert time.monotonic() - t0 < timeout
        assert res.num_errors == 0 and res.overall.tolist() == [0.5] * n
    finally:
        mgr.close()


def test_stop_in_the_pool_kills_the_workers(tmp_path: Path) -> None:
    f = tmp_path / "hang_rewards.py"
    f.write_text(HANG_FILE)
    mgr = manager(f"{f}:hang", limit=1, mode="stop", num_workers=1, timeout_s=0.3)
    try:
        with pytest.raises(RuntimeError, match=r"failed 1 times in a row \(reward\.max_consecutive_errors=1"):
            mgr.score([GOOD] * 4, [ROW] * 4)
        assert mgr._pool is not None and mgr._pool._workers == []
    finally:
        mgr.close()
