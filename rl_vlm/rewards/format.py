"""The R1-V / GRPO-CARE / Curr-ReFT format reward (algorithms.md §7), strict or lenient."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Lazy quantifiers as in R1-V; with fullmatch the whole (stripped) response must be one
# <think> block followed by one <answer> block, with only whitespace between them.
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def format_reward(response: str, row: Mapping[str, Any], strict: bool = True) -> float:
    """Whether ``response`` is a ``<think>…</think>`` block followed by an ``<answer>…</answer>`` block.

    strict (default, §7 "R1-V / GRPO-CARE / Curr-ReFT format"): 1.0 iff ``response.strip()``
    fullmatches ``<think>.*?</think>\\s*<answer>.*?</answer>`` (DOTALL): nothing before, after or
    between the blocks but whitespace. Lenient (``strict=False``): 1.0 iff that pattern occurs
    anywhere (``re.search``), so text around the blocks is allowed; unclosed or out-of-order tags
    still score 0. ``row`` is unused.
    """
    if strict:
        return 1.0 if FORMAT_PATTERN.fullmatch(response.strip()) else 0.0
    return 1.0 if FORMAT_PATTERN.search(response) else 0.0
