"""Reward functions are checked at config validation: one ConfigError naming the key, no traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.config import Config, ConfigError, RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import REWARDS
from rl_vlm.rewards.checks import check_reward_config
from rl_vlm.validation import validate

USER_FILE = '''
CALLED = []
NOT_A_FUNCTION = 3

def good(response, row):
    CALLED.append(response)  # validation must never call it
    return 1.0

def one_arg(response):
    return 1.0

def strict(response, row, threshold):
    return 1.0

def open_kwargs(response, row, **kwargs):
    return 1.0

def with_length(response, row, *, response_length=None, scale=1.0):
    return 1.0
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    f = tmp_path / "my_rewards.py"
    f.write_text(USER_FILE)
    return f


def fn(name: str, **kwargs: object) -> RewardFunctionConfig:
    return RewardFunctionConfig(name=name, kwargs=dict(kwargs))


def error_of(cfg: RewardConfig, prefix: str = "reward") -> str:
    with pytest.raises(ConfigError) as e:
        check_reward_config(cfg, prefix)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_unknown_name_lists_the_known_ones() -> None:
    assert {"accuracy", "format", "math", "iou"} <= set(REWARDS)
    known = ", ".join(sorted(REWARDS))  # other tests may register more
    assert error_of(RewardConfig(functions=(fn("nosuch"),))) == (
        f"reward.functions[0].name: unknown reward 'nosuch' (known: {known}; "
        "or give path/to/file.py:fn or package.module:fn)")


def test_unknown_name_in_a_task_set() -> None:
    cfg = RewardConfig(by_task={"math": (fn("format"), fn("mth"))})
    assert error_of(cfg).startswith("reward.by_task.math[1].name: unknown reward 'mth' (known: ")


def test_missing_file(tmp_path: Path) -> None:
    spec = f"{tmp_path}/nope.py:score"
    assert error_of(RewardConfig(functions=(fn("format"), fn(spec)))) == (
        f"reward.functions[1].name: {spec!r}: file '{tmp_path}/nope.py' does not exist")


def test_missing_relative_file_says_where_it_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert error_of(RewardConfig(functions=(fn("sub/nope.py:score"),))) == (
        f"reward.functions[0].name: 'sub/nope.py:score': file '{tmp_path}/sub/nope.py' does not exist "
        "(relative paths resolve against the launch directory)")


@pytest.mark.parametrize("source, error", [
    ("def broken(:\n", "SyntaxError: "),
    ("raise RuntimeError('needs a GPU')\n", "RuntimeError: needs a GPU"),
    ("import no_such_package_xyz\n", "ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    ("import sys\nsys.exit(2)\n", "SystemExit: 2"),
])
def test_file_that_cannot_be_imported(tmp_path: Path, source: str, error: str) -> None:
    f = tmp_path / "bad_rewards.py"
    f.write_text(source)
    message = error_of(RewardConfig(functions=(fn(f"{f}:score"),)))
    assert message.startswith(f"reward.functions[0].name: '{f}:score': importing '{f}' failed: {error}")


def test_missing_and_non_callable_attribute(user_file: Path) -> None:
    assert error_of(RewardConfig(functions=(fn(f"{user_file}:nope"),))) == (
        f"reward.functions[0].name: '{user_file}:nope': '{user_file}' has no function 'nope'")
    assert error_of(RewardConfig(functions=(fn(f"{user_file}:NOT_A_FUNCTION"),))) == (
        f"reward.functions[0].name: '{user_file}:NOT_A_FUNCTION': 'NOT_A_FUNCTION' is not callable (a int)")


def test_module_specs() -> None:
    assert error_of(RewardConfig(functions=(fn("rl_vlm.no_such_module:score"),))) == (
        "reward.functions[0].name: 'rl_vlm.no_such_module:score': cannot import module 'rl_vlm.no_such_module': "
        "ModuleNotFoundError: No module named 'rl_vlm.no_such_module'")
    assert error_of(RewardConfig(functions=(fn("rl_vlm.rewards.format:nope"),))) == (
        "reward.functions[0].name: 'rl_vlm.rewards.format:nope': 'rl_vlm.rewards.format' has no function 'nope'")
    assert error_of(RewardConfig(functions=(fn("my_rewards.py:"),))) == (
        "reward.functions[0].name: 'my_rewards.py:' is neither a known reward nor path/to/file.py:fn "
        "or package.module:fn")


def test_wrong_signature(user_file: Path) -> None:
    spec = f"{user_file}:one_arg"
    assert error_of(RewardConfig(functions=(fn(spec),))) == (
        f"reward.functions[0].name: {spec!r} must accept (response, row) as its first two positional "
        "arguments; its signature is (response)")
    spec = f"{user_file}:strict"
    assert error_of(RewardConfig(functions=(fn(spec),))) == (
        f"reward.functions[0].kwargs: {spec!r} cannot be called as fn(response, row, **{{}}): "
        "missing a required argument: 'threshold' (its signature is (response, row, threshold))")


def test_kwargs_must_be_accepted(user_file: Path) -> None:
    assert error_of(RewardConfig(functions=(fn("format", typo=1),))).startswith(
        "reward.functions[0].kwargs: 'format' cannot be called as fn(response, row, **{'typo': 1}): "
        "got an unexpected keyword argument 'typo'")
    spec = f"{user_file}:good"
    assert error_of(RewardConfig(functions=(fn(spec, bonus=1),))) == (
        f"reward.functions[0].kwargs: {spec!r} cannot be called as fn(response, row, **{{'bonus': 1}}): "
        "got an unexpected keyword argument 'bonus' (its signature is (response, row))")
    assert error_of(RewardConfig(functions=(fn("overlong", max_length=9, buffer=1, response_length=3),))) == (
        "reward.functions[0].kwargs: response_length is filled in by the reward manager, not kwargs "
        "(declare a response_length parameter to receive it)")


def test_good_user_functions_pass_and_are_not_called(user_file: Path) -> None:
    cfg = RewardConfig(functions=(fn(f"{user_file}:good"), fn(f"{user_file}:open_kwargs", anything=1),
                                  fn(f"{user_file}:with_length", scale=2.0), fn("iou", threshold=0.5),
                                  fn("rl_vlm.rewards.format:format_reward", strict=False)))
    check_reward_config(cfg, "reward")
    from rl_vlm.rewards import resolve_reward

    assert resolve_reward(f"{user_file}:good").__globals__["CALLED"] == []


def test_duplicate_and_empty_sets() -> None:
    assert error_of(RewardConfig(by_task={"g": (fn("iou"), fn("iou"))}), "curriculum.stages[2].reward") == (
        "curriculum.stages[2].reward.by_task.g: ['iou'] configured more than once; sub-scores are keyed by "
        "name, so give the second one its own `key`")
    assert error_of(RewardConfig(by_task={"g": ()})) == "reward.by_task.g: at least one reward function is required"


# ------------------------------------------------------------------------------ through validate()
def _with_stage_reward(cfg: Config, stage: int, reward: RewardConfig) -> Config:
    stages = list(cfg.curriculum.stages)
    stages[stage] = dataclasses.replace(stages[stage], reward=reward)
    return dataclasses.replace(cfg, curriculum=dataclasses.replace(cfg.curriculum, stages=tuple(stages)))


def test_validate_names_the_run_reward_key() -> None:
    cfg = compose([])
    bad = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, functions=(fn("format"), fn("nosuch"))))
    with pytest.raises(ConfigError, match=r"^reward\.functions\[1\]\.name: unknown reward 'nosuch' \(known: "):
        validate(bad, check_paths=False)


def test_validate_names_the_task_set_key(user_file: Path) -> None:
    cfg = compose(["reward=mixed_tasks"])
    sets = {**cfg.reward.by_task, "math": (fn("format"), fn(f"{user_file}:strict"))}
    bad = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, by_task=sets))
    with pytest.raises(ConfigError, match=r"^reward\.by_task\.math\[1\]\.kwargs: .*missing a required argument"):
        validate(bad)


def test_validate_names_the_stage_reward_key(tmp_path: Path) -> None:
    cfg = compose(["curriculum=easy_vqa"])
    stage_reward = RewardConfig(functions=(fn("format"), RewardFunctionConfig(name="exact_match", key="accuracy")),
                                by_task={"t": (fn(f"{tmp_path}/gone.py:score"),)})
    with pytest.raises(ConfigError, match=r"^curriculum\.stages\[1\]\.reward\.by_task\.t\[0\]\.name: .*does not exist"):
        validate(_with_stage_reward(cfg, 1, stage_reward))
    stage_reward = RewardConfig(functions=(fn("formatt"),))
    with pytest.raises(ConfigError, match=r"^curriculum\.stages\[0\]\.reward\.functions\[0\]\.name: unknown reward"):
        validate(_with_stage_reward(cfg, 0, stage_reward), check_paths=False)


def test_check_paths_false_does_not_import_user_code(tmp_path: Path) -> None:
    # A config meant for another machine: its files are not here, but names are still checked.
    cfg = compose([])
    remote = dataclasses.replace(cfg, reward=dataclasses.replace(
        cfg.reward, functions=(fn(f"{tmp_path}/elsewhere.py:score"), fn("accuracy"))))
    validate(remote, check_paths=False)
    with pytest.raises(ConfigError, match=r"^reward\.functions\[0\]\.name: .*does not exist"):
        validate(remote)
