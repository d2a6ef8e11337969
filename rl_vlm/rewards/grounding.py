"""Grounding IoU reward (algorithms.md §7, VLM-R1 ``iou_reward`` / Curr-ReFT detection).

The predicted box is the first ``[x1, y1, x2, y2]`` (integers or decimals, optionally inside a
JSON object such as ``{"bbox_2d": [...]}``) in the content of the last ``<answer>…</answer>``.
The ground truth is ``row["bbox"]`` (a list of 4 numbers) or, failing that, the first box in
``row["answer"]``. Boxes are compared in the same coordinate frame: unlike VLM-R1 there is no
rescaling from model-input pixels to the original image (Curr-ReFT does not rescale either);
datasets should store boxes in the resized image's pixels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rl_vlm.rewards.accuracy import extract_answer

_NUM = r"-?\d+(?:\.\d+)?"
BOX_PATTERN = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first ``[x1, y1, x2, y2]`` in ``text`` (None when there is none)."""
    m = BOX_PATTERN.search(text)
    if m is None:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return x1, y1, x2, y2


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0 for empty or degenerate ones).

    VLM-R1 writes the intersection as (min x2 − 1 − max x1 + 1)·(…), i.e. the plain overlap
    width × height, and the union from areas without +1; this is that formula."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_reward(response: str, row: Mapping[str, Any], threshold: float | None = None) -> float:
    """Continuous IoU (VLM-R1), or ``1.0 if IoU > threshold else 0.0`` with ``threshold``
    (Curr-ReFT uses 0.5). A response without an answer box scores 0."""
    answer = extract_answer(response)
    pred = None if answer is None else parse_box(answer)
    if pred is None:
        return 0.0
    gt_raw = row.get("bbox")
    gt = tuple(float(v) for v in gt_raw) if gt_raw is not None else parse_box(str(row.get("answer", "")))
    if gt is None or len(gt) != 4:
        raise ValueError("row has no ground-truth box in 'bbox' or 'answer'")
    iou = box_iou(pred, gt)
    if threshold is None:
        return iou
    return 1.0 if iou > threshold else 0.0
