"""easy-VQA conversion: rows, task labels, relative image paths, loadability, idempotence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import easy_vqa

from rl_vlm.data.dataset import RowDataset
from rl_vlm.data.easy_vqa import convert_easy_vqa, question_task


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_question_task() -> None:
    assert [question_task(a) for a in ("yes", "no", "circle", "rectangle", "triangle", "teal", "gray")] == \
        ["yes_no", "yes_no", "shape", "shape", "shape", "color", "color"]
    assert {question_task(a) for a in easy_vqa.get_answers()} == {"yes_no", "shape", "color"}


def test_convert_subset(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "easy_vqa"
    train, test = convert_easy_vqa(out, max_train=20, max_test=10)
    assert (train, test) == (out / "train.jsonl", out / "test.jsonl")
    for path, split, n, (questions, answers, ids) in [(train, "train", 20, easy_vqa.get_train_questions()),
                                                      (test, "test", 10, easy_vqa.get_test_questions())]:
        rows = read_rows(path)
        assert len(rows) == n
        for i, row in enumerate(rows):
            assert set(row) == {"images", "problem", "answer", "task", "uid"}
            # Package order and text, unchanged.
            assert row["problem"] == questions[i] and row["answer"] == answers[i]
            assert row["images"] == [f"images/{split}/{ids[i]}.png"] and (out / row["images"][0]).is_file()
            assert row["uid"] == f"easy_vqa/{split}/{i}"
            # The label agrees with the wording of the question.
            q = row["problem"]
            expected = ("yes_no" if q.startswith(("is ", "does ", "is there", "are ")) else
                        "shape" if "shape" in q and "color" not in q else "color")
            assert row["task"] == expected, row
    assert {r["task"] for r in read_rows(train)} == {"yes_no", "shape", "color"}
    # Only the used images are copied.
    assert len(list((out / "images" / "test").iterdir())) == len({r["images"][0] for r in read_rows(test)})

    from transformers import AutoProcessor

    # The files load as a dataset from any working directory (paths resolve next to the file).
    ds = RowDataset([str(train), str(test)], AutoProcessor.from_pretrained(tiny_model_dir), "think_answer",
                    min_pixels=3136, max_pixels=12845056, max_prompt_length=512)
    prompts = [ds.get(i) for i in range(len(ds))]
    assert len(prompts) == 30 and not ds.skipped and all(p is not None for p in prompts)
    assert prompts[0].uid == "easy_vqa/train/0" and prompts[0].images[0].size == (56, 56)
    assert prompts[0].row["task"] == question_task(prompts[0].row["answer"])


def test_convert_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "evqa"
    train, test = convert_easy_vqa(out, max_train=20, max_test=10)
    files = [train, test, *sorted((out / "images").rglob("*.png"))]
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    time.sleep(0.01)
    assert convert_easy_vqa(out, max_train=20, max_test=10) == (train, test)
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before  # nothing rewritten
    assert not list(out.rglob("*.tmp"))
    # A different subset rewrites the rows (images already there are reused).
    convert_easy_vqa(out, max_train=5, max_test=0)
    assert len(read_rows(train)) == 5 and test.read_text() == ""
