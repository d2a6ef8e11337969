"""DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13; verl ``overlong_buffer``).

With L = the response length, L_max = ``max_length`` and L_cache = ``buffer``::

    score = 0                                       if L <= L_max - L_cache
          = -penalty * (L - (L_max - L_cache)) / L_cache   if L_max - L_cache < L <= L_max
          = -penalty                                if L > L_max

a linear ramp over the last ``buffer`` units before the maximum. Add it to the composite with
weight 1 (DAPO adds it to the accuracy reward; verl's ``overlong_penalty_factor`` is ``penalty``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal


def overlong_reward(response: str, row: Mapping[str, Any], max_length: int, buffer: int,
                    penalty: float = 1.0, unit: Literal["tokens", "chars"] = "tokens",
                    response_length: int | None = None) -> float:
    """The penalty above (≤ 0) for one response.

    Args:
        max_length: L_max, normally ``rollout.max_new_tokens`` (in ``unit``).
        buffer: L_cache, the length of the ramp (in ``unit``); 0 < buffer <= max_length.
        penalty: the score at and beyond ``max_length`` is ``-penalty``.
        unit: ``tokens`` uses ``response_length``, which the reward manager passes when the
            driver gives ``RewardManager.score(..., response_lengths=...)``; without it the call
            raises (scored 0, counted as an error). ``chars`` uses ``len(response)``.
        response_length: the response's token count, filled in by the manager.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong: need 0 < buffer <= max_length, got buffer={buffer}, max_length={max_length}")
    if unit == "chars":
        length = len(response)
    elif unit == "tokens":
        if response_length is None:
            raise ValueError("overlong with unit=tokens needs the response lengths in tokens: the driver "
                             "must call RewardManager.score(..., response_lengths=...) (or use unit=chars)")
        length = response_length
    else:
        raise ValueError(f"overlong: unit must be 'tokens' or 'chars', got {unit!r}")
    excess = length - (max_length - buffer)
    return -penalty * min(max(excess, 0) / buffer, 1.0)
