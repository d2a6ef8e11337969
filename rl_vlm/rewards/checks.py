"""Start-up checks of a reward config: every function resolves and fits the call contract.

:func:`rl_vlm.validation.validate` calls :func:`check_reward_config` for ``reward`` and for each
curriculum stage's own ``reward``, so a typo in a name, a missing or broken user file or a
signature that cannot take ``(response, row, **kwargs)`` stops the run with one
:class:`~rl_vlm.config.ConfigError` naming the key, before any data is loaded or actor started
(rather than a traceback from :class:`~rl_vlm.rewards.manager.RewardManager` later).

No torch here: resolving a user file imports it, nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from typing import Any

from rl_vlm.config import ConfigError, RewardConfig, RewardFunctionConfig
from rl_vlm.rewards import REWARDS, RewardFn, _load_file


def check_reward_config(cfg: RewardConfig, key_prefix: str, resolve_user_code: bool = True) -> None:
    """Raise ConfigError naming the first bad entry of ``cfg.functions`` and ``cfg.by_task``.

    Args:
        cfg: a reward config (the run's, or a curriculum stage's own).
        key_prefix: where ``cfg`` sits in the config, e.g. ``reward`` or
            ``curriculum.stages[1].reward``; messages name ``<key_prefix>.functions[i].name``.
        resolve_user_code: import ``file.py:fn`` / ``module:fn`` functions and check their
            signatures; False (``validate(check_paths=False)``: the config may be meant for
            another machine) checks built-in names and the spec syntax only.
    """
    sets = [(f"{key_prefix}.functions", cfg.functions),
            *((f"{key_prefix}.by_task.{task}", fns) for task, fns in cfg.by_task.items())]
    for where, fcfgs in sets:
        if not fcfgs:
            raise ConfigError(f"{where}: at least one reward function is required")
        keys = [f.key or f.name for f in fcfgs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ConfigError(f"{where}: {dupes} configured more than once; sub-scores are keyed by name, "
                              "so give the second one its own `key`")
        for i, fcfg in enumerate(fcfgs):
            check_reward_function(fcfg, f"{where}[{i}]", resolve_user_code)


def check_reward_function(fcfg: RewardFunctionConfig, key: str, resolve_user_code: bool = True) -> RewardFn | None:
    """The function of one config entry, checked; ConfigError naming ``<key>.name`` or
    ``<key>.kwargs`` otherwise. None when it is user code and ``resolve_user_code`` is False."""
    if "response_length" in fcfg.kwargs:
        raise ConfigError(f"{key}.kwargs: response_length is filled in by the reward manager, not kwargs "
                          "(declare a response_length parameter to receive it)")
    fn = _resolve(fcfg.name, f"{key}.name", resolve_user_code)
    if fn is not None:
        _check_signature(fcfg.name, fn, fcfg.kwargs, key)
    return fn


def _resolve(name: str, key: str, resolve_user_code: bool) -> RewardFn | None:
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise ConfigError(f"{key}: unknown reward {name!r} (known: {', '.join(sorted(REWARDS))}; "
                          "or give path/to/file.py:fn or package.module:fn)")
    where, _, attr = name.rpartition(":")
    if not where or not attr or not attr.isidentifier():
        raise ConfigError(f"{key}: {name!r} is neither a known reward nor path/to/file.py:fn or package.module:fn")
    if not resolve_user_code:
        return None
    if where.endswith(".py") or "/" in where or os.sep in where:
        full = os.path.abspath(os.path.expanduser(where))
        if not os.path.isfile(full):
            hint = ("" if os.path.isabs(os.path.expanduser(where))
                    else " (relative paths resolve against the launch directory)")
            raise ConfigError(f"{key}: {name!r}: file {full!r} does not exist{hint}")
        try:
            module: Any = _load_file(where, name)
        except (Exception, SystemExit) as e:  # whatever the user file raises at import: one line
            raise ConfigError(f"{key}: {name!r}: importing {full!r} failed: {_one_line(e)}") from e
    else:
        try:
            module = importlib.import_module(where)
        except (Exception, SystemExit) as e:
            raise ConfigError(f"{key}: {name!r}: cannot import module {where!r}: {_one_line(e)}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"{key}: {name!r}: {where!r} has no function {attr!r}")
    if not callable(fn):
        raise ConfigError(f"{key}: {name!r}: {attr!r} is not callable (a {type(fn).__name__})")
    return fn


def _check_signature(name: str, fn: RewardFn, kwargs: Mapping[str, Any], key: str) -> None:
    """The manager calls ``fn(response, row, **kwargs)`` (plus ``response_length=`` when declared)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some C callables have no signature: nothing to check
        return
    try:
        sig.bind_partial("", {})
    except TypeError:
        raise ConfigError(f"{key}.name: {name!r} must accept (response, row) as its first two positional "
                          f"arguments; its signature is {sig}") from None
    extra = {"response_length": None} if "response_length" in sig.parameters else {}
    try:
        sig.bind("", {}, **kwargs, **extra)
    except TypeError as e:
        raise ConfigError(f"{key}.kwargs: {name!r} cannot be called as fn(response, row, **{dict(kwargs)!r}): "
                          f"{e} (its signature is {sig})") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
