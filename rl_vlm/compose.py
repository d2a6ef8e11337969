"""Hydra composition -> the typed :class:`rl_vlm.config.Config`, once, at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from rl_vlm.config import Config, ConfigError, from_dict, to_dict


def config_dir() -> Path:
    """The ``configs/`` tree: ``$RL_VLM_CONFIG_DIR``, else the repository's, else ``./configs``."""
    env = os.environ.get("RL_VLM_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    repo = Path(__file__).resolve().parent.parent / "configs"
    return repo if repo.is_dir() else Path("configs").resolve()


def register_base() -> None:
    """Register every dataclass default as the ``base`` node, so that command-line overrides of
    any real key work and a misspelled key fails in Hydra's struct check, naming the key."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base", node=to_dict(Config()))


def from_omegaconf(cfg: Any) -> Config:
    """Resolve interpolations and convert to frozen dataclasses (unknown keys and types raise)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    raw.pop("experiment", None)
    return from_dict(Config, cast("dict[str, Any]", raw))  # a DictConfig's keys are strings


def compose(overrides: list[str] | None = None) -> Config:
    """Compose ``configs/config.yaml`` with ``overrides`` outside a Hydra app (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    register_base()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        try:
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
        except HydraException as e:
            raise ConfigError(str(e)) from e
    return from_omegaconf(cfg)
