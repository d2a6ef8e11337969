"""The project's one configuration error type.

A module without imports, so that every layer (the config tree, the variants' own config
dataclasses under :mod:`rl_vlm.algorithms`, validation) raises the same type without an import
circle. Re-exported as :class:`rl_vlm.config.ConfigError`.
"""


class ConfigError(ValueError):
    """A configuration problem, raised before any actor starts; the message names the key."""


def require(ok: bool, key: str, rule: str, value: object) -> None:
    """Raise ``ConfigError("<key>: <rule>, got <value>")`` unless ``ok``; ``key`` is the full
    dotted key (``algorithm.papo.gamma``)."""
    if not ok:
        raise ConfigError(f"{key}: {rule}, got {value!r}")
