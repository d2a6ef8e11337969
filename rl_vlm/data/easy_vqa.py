"""Convert the ``easy-vqa`` PyPI package into JSONL rows with relative image paths.

easy-VQA is a tiny synthetic VQA set (64x64 PNGs of one coloured shape; 13 answer classes) that
ships inside the package, so the default experiments need no download. The output is the same
row format as any other dataset (:mod:`rl_vlm.data.dataset`), self-contained in ``out_dir``:

    out_dir/train.jsonl, out_dir/test.jsonl
    out_dir/images/{train,test}/<image id>.png

with rows ``{"images": ["images/train/12.png"], "problem": "what color is the shape?",
"answer": "blue", "task": "color", "uid": "easy_vqa/train/<question index>"}``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

SHAPES = frozenset({"circle", "rectangle", "triangle"})
YES_NO = frozenset({"yes", "no"})

Task = Literal["yes_no", "shape", "color"]


def question_task(answer: str) -> Task:
    """The question type, read off the answer class (every easy-VQA answer class belongs to
    exactly one type): ``yes_no``, ``shape`` or ``color``."""
    if answer in YES_NO:
        return "yes_no"
    return "shape" if answer in SHAPES else "color"


def _copy_if_needed(src: str, dst: Path) -> None:
    """Copy ``src`` to ``dst`` unless an identical-size copy is there (re-runs are cheap)."""
    if dst.exists() and dst.stat().st_size == os.path.getsize(src):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # an interrupted copy never leaves a truncated PNG under the final name


def package_split(split: Literal["train", "test"]) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    """(questions, answers, image ids, {image id: png path}) of a split of the easy-vqa package."""
    import easy_vqa

    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        return questions, answers, image_ids, easy_vqa.get_train_image_paths()
    questions, answers, image_ids = easy_vqa.get_test_questions()
    return questions, answers, image_ids, easy_vqa.get_test_image_paths()


def _write_split(out: Path, split: Literal["train", "test"], limit: int | None) -> Path:
    import easy_vqa

    questions, answers, image_ids, paths = package_split(split)
    known = set(easy_vqa.get_answers())
    n = len(questions) if limit is None else min(limit, len(questions))
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        if answers[i] not in known:
            raise ValueError(f"easy_vqa {split} question {i} has unknown answer {answers[i]!r}")
        rel = f"images/{split}/{image_ids[i]}.png"
        _copy_if_needed(paths[image_ids[i]], out / rel)
        row = {"images": [rel], "problem": questions[i], "answer": answers[i],
               "task": question_task(answers[i]), "uid": f"easy_vqa/{split}/{i}"}
        lines.append(json.dumps(row) + "\n")
    target = out / f"{split}.jsonl"
    text = "".join(lines)
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return target  # unchanged: leave the file (and its mtime) alone
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)  # a half-written file is never left under the final name
    return target


def convert_easy_vqa(out_dir: str | Path, max_train: int | None = None,
                     max_test: int | None = None) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (and the PNGs they use) under ``out_dir``.

    Rows keep the package's order and question text; ``max_train``/``max_test`` keep the first
    that many questions of each split (None = all: 38,575 train and 9,673 test questions over
    4,000 and 1,000 images). Idempotent: re-running skips images already copied and leaves an
    unchanged JSONL untouched.

    Also writes ``<split>_<task>.jsonl`` (task = yes_no, shape, color) beside them, the same rows
    split by question type, for single-task runs and curricula.

    Returns:
        (train.jsonl path, test.jsonl path).
    """
    for name, limit in (("max_train", max_train), ("max_test", max_test)):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {limit}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_split(out, "train", max_train), _write_split(out, "test", max_test)
    for path in paths:
        _split_by_task(path)
    return paths


def _split_by_task(path: Path) -> None:
    by_task: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            by_task.setdefault(json.loads(line)["task"], []).append(line)
    for task, lines in by_task.items():
        target = path.with_name(f"{path.stem}_{task}.jsonl")
        text = "".join(lines)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            tmp = target.with_suffix(".jsonl.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
