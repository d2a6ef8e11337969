"""Rows ``{images, problem, answer, ...}`` from JSONL/Parquet -> :class:`rl_vlm.batch.Prompt`.

Bad rows never kill a run: structural problems (unparsable line, empty problem, missing answer,
malformed image spec) are found when the files are read; problems that need the image (missing
or unreadable file, prompt too long) are found when the row is first fetched. Either way the
row is logged with its file and row number, recorded in ``dataset.skipped`` and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from rl_vlm.batch import Prompt
from rl_vlm.data.images import load_image, num_visual_tokens, resize_image
from rl_vlm.data.prompt import render_prompt

log = logging.getLogger("rl_vlm.data")


@dataclass(frozen=True)
class SkippedRow:
    file: str
    row: str
    """``line N`` (1-based) for JSONL, ``row N`` (0-based) for Parquet."""
    reason: str


def _read_rows(path: str) -> list[tuple[str, Any]]:
    """(row label, raw row or exception) for every row of a JSONL or Parquet file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if path.endswith((".jsonl", ".json")):
        out: list[tuple[str, Any]] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    out.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    out.append((f"line {n}", ValueError(f"invalid JSON: {e.msg}")))
        return out
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [(f"row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    raise ValueError(f"data file {path!r}: unsupported extension (use .jsonl or .parquet)")


def _check_row(row: Any) -> dict[str, Any]:
    """Normalise a raw row or raise ValueError saying what is wrong with it."""
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not an object")
    problem = row.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("'problem' is missing or empty")
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("'answer' is missing or empty")
    images = row.get("images", row.get("image"))
    if images is None:
        raise ValueError("'images' is missing")
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise ValueError("'images' is empty")
    for im in images:
        ok = isinstance(im, (str, bytes)) or (isinstance(im, dict) and (im.get("bytes") is not None or im.get("path")))
        if not ok:
            raise ValueError(f"malformed image entry of type {type(im).__name__}")
    out = {k: v for k, v in row.items() if k not in ("images", "image")}
    out.update(problem=problem, answer=answer.strip())
    out["_images"] = images
    return out


class RowDataset:
    """All structurally valid rows of ``files``; images are decoded on access."""

    def __init__(self, files: Sequence[str], processor: Any, template: str, min_pixels: int, max_pixels: int,
                 max_prompt_length: int) -> None:
        self.processor, self.template = processor, template
        self.min_pixels, self.max_pixels, self.max_prompt_length = min_pixels, max_pixels, max_prompt_length
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.skipped: list[SkippedRow] = []
        self._rows: list[tuple[str, str, dict[str, Any]]] = []
        self._bad: set[int] = set()
        for path in files:
            for label, raw in _read_rows(path):
                try:
                    self._rows.append((path, label, _check_row(raw)))
                except ValueError as e:
                    self._skip(path, label, str(e))
        if not self._rows:
            raise ValueError(f"no valid rows in {list(files)} ({len(self.skipped)} skipped)")

    def _skip(self, path: str, label: str, reason: str) -> None:
        self.skipped.append(SkippedRow(path, label, reason))
        log.warning("skipping %s %s: %s", path, label, reason)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, i: int) -> Prompt | None:
        """The prompt of row ``i``, or None if the row turned out bad (reported once)."""
        if i in self._bad:
            return None
        path, label, row = self._rows[i]
        try:
            base = os.path.dirname(os.path.abspath(path))
            images = [resize_image(load_image(spec, base), self.min_pixels, self.max_pixels) for spec in row["_images"]]
            text = render_prompt(self.processor, row["problem"], len(images), self.template)
            n_tok = len(self.tokenizer(text).input_ids) - len(images) + sum(num_visual_tokens(im.size) for im in images)
            if n_tok > self.max_prompt_length:
                raise ValueError(f"prompt has {n_tok} tokens > data.max_prompt_length={self.max_prompt_length}")
        except (OSError, ValueError) as e:
            self._bad.add(i)
            self._skip(path, label, f"{type(e).__name__}: {e}")
            return None
        fields = {k: v for k, v in row.items() if k != "_images"}
        uid = str(row.get("uid", f"{os.path.basename(path)}:{label.split()[-1]}"))
        return Prompt(uid=uid, prompt_text=text, images=images, row=fields)


class PromptSampler:
    """Seeded epoch-wise shuffling over a :class:`RowDataset`, skipping bad rows; resumable."""

    def __init__(self, dataset: RowDataset, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.epoch, self.pos, self.consumed = 0, 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.dataset)))
        return torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    @property
    def num_skipped(self) -> int:
        return len(self.dataset.skipped)

    def next_batch(self) -> list[Prompt]:
        batch: list[Prompt] = []
        misses = 0
        while len(batch) < self.batch_size:
            if self.pos >= len(self._perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            i = self._perm[self.pos]
            self.pos += 1
            self.consumed += 1
            p = self.dataset.get(i)
            if p is None:
                misses += 1
                if misses > len(self.dataset):
                    raise RuntimeError("every row of the dataset is bad; see the warnings above")
                continue
            batch.append(p)
        return batch

    def first(self, n: int) -> list[Prompt]:
        """The first ``n`` valid rows in file order (the validation set)."""
        out: list[Prompt] = []
        for i in range(len(self.dataset)):
            if len(out) == n:
                break
            p = self.dataset.get(i)
            if p is not None:
                out.append(p)
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos, self.consumed = state["epoch"], state["pos"], state["consumed"]
        self._perm = self._permutation(self.epoch)
