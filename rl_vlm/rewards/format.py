"""The R1-V / GRPO-CARE / Curr-ReFT format reward (algorithms.md §7)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Lazy quantifiers as in R1-V; with fullmatch the whole (stripped) response must be one
# <think> block followed by one <answer> block, with only whitespace between them.
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def format_reward(response: str, row: Mapping[str, Any]) -> float:
    """1.0 iff ``response.strip()`` fullmatches ``<think>.*?</think>\\s*<answer>.*?</answer>``
    (DOTALL), else 0.0 (§7, "R1-V / GRPO-CARE / Curr-ReFT format"). ``row`` is unused."""
    return 1.0 if FORMAT_PATTERN.fullmatch(response.strip()) else 0.0
