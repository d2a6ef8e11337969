"""Convert the ``easy-vqa`` PyPI package into JSONL rows with relative image paths."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SHAPES = {"circle", "rectangle", "triangle"}


def question_task(answer: str) -> str:
    """``yes_no``, ``shape`` or ``color`` from the answer class."""
    if answer in ("yes", "no"):
        return "yes_no"
    return "shape" if answer in SHAPES else "color"


def _write_split(out: Path, split: str, limit: int | None) -> Path:
    import easy_vqa

    if split == "train":
        questions, answers, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        questions, answers, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    n = len(questions) if limit is None else min(limit, len(questions))
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    target = out / f"{split}.jsonl"
    tmp = target.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            rel = f"images/{split}/{ids[i]}.png"
            if not (out / rel).exists():
                shutil.copyfile(paths[ids[i]], out / rel)
            row = {"images": [rel], "problem": questions[i], "answer": answers[i],
                   "task": question_task(answers[i]), "uid": f"easy_vqa/{split}/{i}"}
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, target)  # a half-written file is never left under the final name
    return target


def convert_easy_vqa(out_dir: str | Path, max_train: int | None = None,
                     max_test: int | None = None) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (+ images) under ``out_dir``; idempotent."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _write_split(out, "train", max_train), _write_split(out, "test", max_test)
