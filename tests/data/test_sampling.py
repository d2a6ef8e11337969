"""The samplers of rl_vlm.data.sampling (mixture, task subsets, difficulty weighting), bad rows
counted once per row, skipped_rows.jsonl, and resuming from old-format sampler states.

Fake datasets, or a real RowDataset with a whitespace "tokenizer": pure Python, well under a second.
"""

from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from rl_vlm.config import DifficultyConfig
from rl_vlm.data.dataset import IMAGE_PAD, RowDataset, SkippedRow
from rl_vlm.data.sampling import (
    DifficultyTracker,
    MixtureSampler,
    PromptSampler,
    Sampler,
    TaskSubset,
    frontier_weight,
)
from rl_vlm.data.skipped import SKIPPED_ROWS_FILE, SkippedRowsLog
from tests.data.fake_rows import FakeDataset, _uids


class WordTokenizer:
    """Just enough of a HF tokenizer for RowDataset: one id per whitespace-separated word,
    ``<|image_pad|>`` is id 1, and a chat template that puts the images before the text."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[1 if w == IMAGE_PAD else 2 for w in text.split()])

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool,
                            tokenize: bool) -> str:
        return " ".join(IMAGE_PAD if c["type"] == "image" else c["text"] for c in messages[0]["content"])


BAD = (2, 5, 9, 14, 17)
"""0-based rows of the 20-row file whose image is missing: found bad only when first drawn."""


def write_rows(path: Path, n: int = 20, bad: tuple[int, ...] = BAD) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(buf, format="PNG")
    (path.parent / "ok.png").write_bytes(buf.getvalue())
    rows = [{"images": ["missing.png" if i in bad else "ok.png"], "problem": f"question {i}?",
             "answer": f"a{i}", "task": "ab"[i % 2]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_dataset(path: Path) -> RowDataset:
    return RowDataset([str(path)], WordTokenizer(), "plain", min_pixels=3136, max_pixels=3136, max_prompt_length=512)


@pytest.fixture()
def rows_file(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "rows.jsonl")


# ---------------------------------------------------------------- interface
def test_both_samplers_are_samplers(rows_file: Path) -> None:
    ds = make_dataset(rows_file)
    assert isinstance(PromptSampler(ds, 2, seed=0), Sampler)
    assert isinstance(MixtureSampler([ds, TaskSubset(ds, "a")], [1.0, 1.0], 2, seed=0), Sampler)
    assert not isinstance([], Sampler)


# ---------------------------------------------------------------- bad rows, once each
def test_bad_rows_are_counted_once_however_often_drawn(rows_file: Path) -> None:
    ds = make_dataset(rows_file)
    sampler = PromptSampler(ds, batch_size=4, seed=3)
    for _ in range(15):  # 60 valid prompts: four epochs of the 15 good rows
        sampler.next_batch()
    assert sampler.epoch == 3
    assert sampler.consumed >= 60 + 3 * len(BAD)  # every bad row was drawn in each full epoch...
    assert sampler.num_skipped == len(BAD)  # ...and counted once
    # In the order found: the order of epoch 0's permutation. JSONL rows are 1-based lines.
    order = list(range(20))
    random.Random(3).shuffle(order)
    expected = [i + 1 for i in order if i in BAD]
    assert [r.row for r in sampler.bad_rows] == expected
    assert all(r.file == str(rows_file) and r.numbering == "line" and "missing.png" in r.reason
               for r in sampler.bad_rows)
    assert ds.bad_rows == sampler.bad_rows and ds.num_bad == len(BAD)
    assert ds.bad_row(BAD[0]) == sampler.bad_rows[expected.index(BAD[0] + 1)] and ds.bad_row(0) is None


def test_mixture_counts_a_row_shared_by_two_sources_once(rows_file: Path) -> None:
    ds = make_dataset(rows_file)
    # Source 1 is a subset of source 0: a bad row of task "b" can be met through both.
    s = MixtureSampler([ds, TaskSubset(ds, "b")], [1.0, 1.0], batch_size=4, seed=1)
    for _ in range(20):
        s.next_batch()
    assert s.num_skipped == len(BAD)
    assert sorted(r.row for r in s.bad_rows) == [i + 1 for i in BAD]
    assert sorted(r.row for r in s.samplers[1].bad_rows) == [i + 1 for i in BAD if i % 2 == 1]


def test_state_round_trip_keeps_the_bad_rows(rows_file: Path) -> None:
    sampler = PromptSampler(make_dataset(rows_file), batch_size=3, seed=7)
    for _ in range(4):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
    assert state["num_skipped"] == len(sampler.bad_rows) > 0
    expected = [_uids(sampler.next_batch()) for _ in range(8)]

    resumed = PromptSampler(make_dataset(rows_file), batch_size=3, seed=7)
    resumed.load_state_dict(state)
    # The fresh dataset has found nothing yet; the sampler still knows the rows and their reasons.
    assert resumed.dataset.num_bad == 0 and resumed.bad_rows[0].reason == sampler.bad_rows[0].reason
    assert resumed.num_skipped == state["num_skipped"]
    assert [_uids(resumed.next_batch()) for _ in range(8)] == expected
    assert resumed.state_dict() == sampler.state_dict() and resumed.num_skipped == len(BAD)


def test_old_format_state_loads(rows_file: Path) -> None:
    sampler = PromptSampler(make_dataset(rows_file), batch_size=4, seed=3)
    for _ in range(8):
        sampler.next_batch()
    state = sampler.state_dict()
    expected = [_uids(sampler.next_batch()) for _ in range(8)]  # 32 prompts: a whole epoch of 15
    # What a checkpoint from before unique bad rows holds: the same keys less bad_rows, and
    # num_skipped counting every draw of a bad row.
    old = {k: v for k, v in state.items() if k != "bad_rows"}
    old["num_skipped"] = 8
    assert set(old) == {"epoch", "position", "consumed", "num_skipped", "seed", "shuffle", "num_rows"}

    resumed = PromptSampler(make_dataset(rows_file), batch_size=4, seed=3)
    resumed.load_state_dict(old)
    assert resumed.num_skipped == 8 and resumed.bad_rows == []  # the stored number, as it was
    assert [_uids(resumed.next_batch()) for _ in range(8)] == expected  # the same draws
    assert len(resumed.bad_rows) == len(BAD) and resumed.num_skipped == 8  # met again: listed, not added

    mixture = MixtureSampler([make_dataset(rows_file), FakeDataset("f", 5)], [1.0, 1.0], 4, seed=0)
    fake_state = {k: v for k, v in PromptSampler(FakeDataset("f", 5), 1, seed=7919).state_dict().items()
                  if k != "bad_rows"}
    mixture.load_state_dict({"draws": 3, "num_rejected": 0,
                             "sources": [{**old, "seed": 0, "position": 0, "num_skipped": 6, "epoch": 0},
                                         fake_state]})
    assert mixture.num_skipped == 6 and mixture.draws == 3


# ---------------------------------------------------------------- skipped_rows.jsonl
def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_skipped_rows_log_writes_each_row_once(rows_file: Path, tmp_path: Path) -> None:
    path = tmp_path / SKIPPED_ROWS_FILE
    sampler = PromptSampler(make_dataset(rows_file), batch_size=4, seed=3)
    log = SkippedRowsLog(path)
    written = []
    for _ in range(12):  # three epochs: every bad row met three times
        sampler.next_batch()
        written += log.update(sampler)
    assert written == sampler.bad_rows and len(log) == len(BAD)
    lines = _lines(path)
    assert [(e["file"], e["row"]) for e in lines] == [(r.file, r.row) for r in sampler.bad_rows]
    assert set(lines[0]) == {"file", "row", "reason", "numbering"} and "missing.png" in lines[0]["reason"]

    # A restarted run: a new log on the same file, samplers that meet the same rows again.
    again = SkippedRowsLog(path)
    fresh = PromptSampler(make_dataset(rows_file), batch_size=4, seed=5)
    for _ in range(8):
        fresh.next_batch()
    assert again.update([fresh, sampler]) == [] and _lines(path) == lines


def test_skipped_rows_log_drops_a_partial_last_line(rows_file: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / SKIPPED_ROWS_FILE
    sampler = PromptSampler(make_dataset(rows_file), batch_size=4, seed=3)
    for _ in range(5):
        sampler.next_batch()
    first = sampler.bad_rows[0]
    path.write_text(json.dumps({"file": first.file, "row": first.row, "reason": first.reason}) + '\n{"file": "x')
    with caplog.at_level(logging.WARNING, logger="rl_vlm.data"):
        log = SkippedRowsLog(path)
    assert "partial line" in caplog.text and len(log) == 1
    assert log.update(sampler) == sampler.bad_rows[1:]
    assert [e["row"] for e in _lines(path)] == [r.row for r in sampler.bad_rows]


# ---------------------------------------------------------------- mixture sampler
def test_mixture_proportions_follow_the_weights() -> None:
    s = MixtureSampler([FakeDataset("a", 50), FakeDataset("b", 70)], [1.0, 3.0], batch_size=8, seed=3)
    uids = [u for _ in range(500) for u in _uids(s.next_batch())]
    frac_a = sum(u.startswith("a:") for u in uids) / len(uids)
    assert frac_a == pytest.approx(0.25, abs=0.02)
    # Each source is walked in its own seeded order: a full epoch of "a" before any repeat.
    first_a = [u for u in uids if u.startswith("a:")][:50]
    assert len(set(first_a)) == 50


def test_mixture_is_deterministic_and_seeded() -> None:
    def batches(seed: int) -> list[list[str]]:
        s = MixtureSampler([FakeDataset("a", 20), FakeDataset("b", 20)], [0.5, 0.5], batch_size=4, seed=seed)
        return [_uids(s.next_batch()) for _ in range(5)]

    assert batches(1) == batches(1)
    assert batches(1) != batches(2)


def test_mixture_zero_weight_source_is_never_drawn() -> None:
    s = MixtureSampler([FakeDataset("a", 5), FakeDataset("b", 5)], [0.0, 1.0], batch_size=4, seed=0)
    assert all(u.startswith("b:") for _ in range(20) for u in _uids(s.next_batch()))


def test_mixture_state_round_trip() -> None:
    def make() -> MixtureSampler:
        return MixtureSampler([FakeDataset("a", 7), FakeDataset("b", 11)], [0.3, 0.7], batch_size=3, seed=5)

    s = make()
    for _ in range(6):
        s.next_batch()
    state = s.state_dict()
    expected = [_uids(s.next_batch()) for _ in range(4)]
    t = make()
    t.load_state_dict(state)
    assert [_uids(t.next_batch()) for _ in range(4)] == expected
    with pytest.raises(ValueError, match="sources"):
        MixtureSampler([FakeDataset("a", 7)], [1.0], 3, 5).load_state_dict(state)


# ---------------------------------------------------------------- task subsets
class TaskRows:
    """The RowDataset accessors TaskSubset uses, over plain task names; ``get(i)`` is ``i``."""

    def __init__(self, tasks: list[str], bad: set[int]) -> None:
        self.tasks, self.files = tasks, ["x.jsonl"]
        self._bad = {i: SkippedRow("x.jsonl", i + 1, "image 0 cannot be used") for i in sorted(bad)}

    def __len__(self) -> int:
        return len(self.tasks)

    def fields(self, i: int) -> dict[str, Any]:
        return {"task": self.tasks[i]}

    def get(self, i: int) -> int:
        return i

    def bad_row(self, i: int) -> SkippedRow | None:
        return self._bad.get(i)

    @property
    def bad_rows(self) -> list[SkippedRow]:
        return list(self._bad.values())


def test_task_sources_select_rows_of_train_files() -> None:
    rows: Any = TaskRows(["a", "b", "a", "c"], bad={2})
    sub = TaskSubset(rows, "a")
    assert len(sub) == 2 and sub.get(1) == 2 and sub.num_bad == 1
    assert sub.bad_row(1) == sub.bad_rows[0] == SkippedRow("x.jsonl", 3, "image 0 cannot be used")
    assert TaskSubset(rows, "b").bad_rows == [] and sub.files == ["x.jsonl (task=a)"]
    with pytest.raises(ValueError, match="task='z'"):
        TaskSubset(rows, "z")


def test_task_subset_of_a_real_dataset(rows_file: Path) -> None:
    ds = make_dataset(rows_file)
    sub = TaskSubset(ds, "b")  # the odd rows
    assert len(sub) == 10 and sub.get(0) is not None and sub.get(0).row["task"] == "b"
    for i in range(len(sub)):
        sub.get(i)
    assert [r.row for r in sub.bad_rows] == [i + 1 for i in BAD if i % 2 == 1] and sub.num_bad == 3
    with pytest.raises(TypeError):
        ds.fields(0)["task"] = "c"  # read-only: a subset cannot change the rows under the others


# ---------------------------------------------------------------- difficulty
def test_frontier_weight_values() -> None:
    assert frontier_weight(0.5, 0.1) == pytest.approx(1.0)
    assert frontier_weight(0.0, 0.1) == pytest.approx(0.1)
    assert frontier_weight(1.0, 0.1) == pytest.approx(0.1)
    assert frontier_weight(0.25, 0.1) == pytest.approx(0.1 + 0.9 * 0.75)
    assert frontier_weight(0.9, 0.0) == pytest.approx(4 * 0.9 * 0.1)


def test_difficulty_ema_and_metrics() -> None:
    d = DifficultyTracker(DifficultyConfig(mode="uid", ema=0.5, floor=0.1))
    ps = [FakeDataset("a", 3).get(i) for i in range(3)]
    d.observe(ps[:2], [1.0, 0.25])    # first observation sets p
    d.observe(ps[:1], [0.0])          # 0.5 * 1.0 + 0.5 * 0.0
    assert d.pass_rate == {"a:0": 0.5, "a:1": 0.25}
    assert d.accept_prob(ps[0]) == pytest.approx(1.0)
    assert d.accept_prob(ps[1]) == pytest.approx(0.775)
    assert d.accept_prob(ps[2]) == 1.0  # unseen
    m = d.metrics(ps)
    assert m["data/difficulty_mean"] == pytest.approx(1 - (0.5 + 0.25) / 2)
    assert m["data/frontier_frac"] == pytest.approx(1.0)  # 0.25 and 0.5 both in [0.2, 0.8]
    task = DifficultyTracker(DifficultyConfig(mode="task"))
    task.observe(ps, [1.0, 0.0, 0.5])
    assert set(task.pass_rate) == {"a"}
    # Estimates of another mode are not reused.
    task.load_state_dict(d.state_dict())
    assert task.pass_rate == {}


def test_difficulty_steers_sampling_to_the_frontier() -> None:
    d = DifficultyTracker(DifficultyConfig(mode="task", floor=0.1))
    easy, frontier = FakeDataset("easy", 40), FakeDataset("frontier", 40)
    d.observe([easy.get(0), frontier.get(0)], [1.0, 0.5])
    s = MixtureSampler([easy, frontier], [1.0, 1.0], batch_size=10, seed=0, difficulty=d)
    uids = [u for _ in range(300) for u in _uids(s.next_batch())]
    # Kept with probability 0.1 vs 1: shares 0.1 / 1.1 and 1 / 1.1.
    assert sum(u.startswith("easy") for u in uids) / len(uids) == pytest.approx(0.1 / 1.1, abs=0.02)
    assert s.num_rejected > 0
