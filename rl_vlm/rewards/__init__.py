"""Rule-based rewards (algorithms.md §7): a registry of reward functions and their resolver.

Contract. A reward function is ``fn(response: str, row: dict, **kwargs) -> float | dict[str, float]``:

- ``response`` is the decoded response text; ``row`` is a copy of the dataset row's fields
  (``problem``, ``answer``, ``task``...; images are not included); ``kwargs`` are the function's
  ``kwargs`` from the reward config. A function that declares a ``response_length`` parameter
  also gets the response's length in tokens (None when the driver did not pass lengths).
- A float is the score. A dict gives named sub-scores and must contain ``"score"``, the value
  that is weighted into the overall reward; its other keys are logged as ``<name>/<key>``.
- Raising is allowed: :class:`~rl_vlm.rewards.manager.RewardManager` scores that sample 0 for
  that function and counts an error; so does running past ``reward.timeout_s`` in a worker.
  After ``reward.max_consecutive_errors`` failures in a row the function is disabled (scores 0,
  never called again) or, with ``reward.on_repeated_errors=stop``, the run stops.
- Names, files, imports and signatures are checked at config validation
  (:func:`rl_vlm.rewards.checks.check_reward_config`), not on the first batch.
- With ``reward.num_workers > 0`` it runs in a worker process: it must be importable there (a
  module-level function of a file or module, not a lambda or a closure) and must not rely on
  state set up in the driver. Full reference: docs/rewards.md.

Built-ins live in :data:`REWARDS`; user code adds to it with :func:`register_reward`, or is
referenced from the config as ``path/to/file.py:fn`` or ``package.module:fn``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, cast

from rl_vlm.rewards.accuracy import (
    accuracy_reward,
    exact_match_reward,
    math_reward,
    multiple_choice_reward,
)
from rl_vlm.rewards.format import format_reward
from rl_vlm.rewards.grounding import iou_reward
from rl_vlm.rewards.judgement import jaccard_reward, yes_no_reward
from rl_vlm.rewards.length import overlong_reward

RewardFn = Callable[..., "float | dict[str, float]"]
F = TypeVar("F", bound=Callable[..., Any])

REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "exact_match": exact_match_reward,
    "math": math_reward,
    "multiple_choice": multiple_choice_reward,
    "iou": iou_reward,
    "overlong": overlong_reward,
    "yes_no": yes_no_reward,
    "jaccard": jaccard_reward,
}
"""Registered reward functions by name (the ``name`` field of a reward config entry)."""

_FILE_MODULES: dict[str, ModuleType] = {}


def register_reward(name: str) -> Callable[[F], F]:
    """Decorator adding ``fn`` to :data:`REWARDS` under ``name``.

    Registering a different function under a taken name raises, so a typo cannot silently
    replace a built-in; re-registering the same function (a module reload) is allowed.
    """

    def decorator(fn: F) -> F:
        old = REWARDS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"reward {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        REWARDS[name] = fn
        return fn

    return decorator


def _load_file(path: str, spec: str) -> ModuleType:
    full = os.path.abspath(os.path.expanduser(path))
    if full in _FILE_MODULES:
        return _FILE_MODULES[full]
    if not os.path.isfile(full):
        raise ValueError(f"reward function {spec!r}: file {full!r} does not exist")
    # A stable, unique module name: two files both called rewards.py must not collide, and the
    # module must sit in sys.modules for pickling (a later parallel manager) and dataclasses.
    mod_name = "rl_vlm_user_reward_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    file_spec = importlib.util.spec_from_file_location(mod_name, full)
    if file_spec is None or file_spec.loader is None:
        raise ValueError(f"reward function {spec!r}: cannot import {full!r} as a Python file")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[mod_name] = module
    try:
        file_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    _FILE_MODULES[full] = module
    return module


def resolve_reward(name: str) -> RewardFn:
    """The reward function for a config ``name``.

    Accepts a registered name (see :data:`REWARDS`), ``path/to/file.py:fn`` (relative paths
    are resolved against the current directory) or ``package.module:fn``. Raises ValueError
    naming the spec when it cannot be found or is not callable.
    """
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise ValueError(f"unknown reward function {name!r}; registered: {sorted(REWARDS)}; "
                         "or give a user function as 'path/to/file.py:fn' or 'package.module:fn'")
    where, _, attr = name.rpartition(":")
    if not where or not attr:
        raise ValueError(f"reward function {name!r}: expected 'path/to/file.py:fn' or 'package.module:fn'")
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _load_file(where, name)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ValueError(f"reward function {name!r}: cannot import module {where!r} ({e})") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"reward function {name!r}: {where!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward function {name!r}: {attr!r} is not callable")
    return cast(RewardFn, fn)


def __getattr__(name: str) -> Any:
    # The manager (and torch with it) is imported on first use only, so reward worker processes,
    # which import this package for the registry, stay light.
    if name in ("RewardManager", "RewardResult"):
        from rl_vlm.rewards import manager

        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REWARDS", "RewardFn", "RewardManager", "RewardResult", "accuracy_reward", "exact_match_reward",
           "format_reward", "iou_reward", "math_reward", "multiple_choice_reward", "overlong_reward",
           "register_reward", "resolve_reward"]
