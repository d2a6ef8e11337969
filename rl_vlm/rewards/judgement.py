"""Curr-ReFT's stage-specific answer rewards (algorithms.md §6.1), strict versions.

Both read the content of the last ``<answer>…</answer>`` (no answer tag scores 0). The authors'
lenient fall-backs for unclosed or duplicated tags are not reproduced (§6.2: they are bugs that
reward malformed output).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rl_vlm.rewards.accuracy import extract_answer

_YES = re.compile(r"\b(yes|true|correct)\b")
_NO = re.compile(r"\b(no|false|incorrect)\b")
_ITEM_SPLIT = re.compile(r"[,，、\s]+")


def judgement(text: str) -> str | None:
    """Map a judgement to ``"yes"``/``"no"`` by whole words, §6.1 stage 1: yes|true|correct ->
    yes, else no|false|incorrect -> no (checked in that order, lower-cased), else None."""
    t = text.lower()
    if _YES.search(t):
        return "yes"
    if _NO.search(t):
        return "no"
    return None


def yes_no_reward(response: str, row: Mapping[str, Any]) -> float:
    """1 if the answer's judgement equals the ground truth's (``row["answer"]``), else 0."""
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    gt = judgement(str(row["answer"]))
    return float(gt is not None and judgement(pred) == gt)


def jaccard_reward(response: str, row: Mapping[str, Any]) -> float:
    """|P ∩ T| / |P ∪ T| of the item lists split on commas (ASCII, full-width, 、) and white
    space, case-sensitive, §6.1 stage 3 ``classify``. A list answer is used as the item list."""
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    answer = row["answer"]
    truth = {str(a).strip() for a in answer} if isinstance(answer, (list, tuple)) \
        else set(_ITEM_SPLIT.split(str(answer).strip()))
    items = set(_ITEM_SPLIT.split(pred.strip()))
    truth.discard("")
    items.discard("")
    union = truth | items
    return len(truth & items) / len(union) if union else 0.0
