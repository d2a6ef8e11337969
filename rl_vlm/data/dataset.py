"""Rows ``{images, problem, answer, ...}`` from JSONL/Parquet -> :class:`rl_vlm.batch.Prompt`.

Rows follow the verl/EasyR1 convention: ``images`` (a list of image specs, or a single one; the
key ``image`` is accepted too), ``problem``, ``answer`` and any extra fields (``task``, ``uid``...)
that reward functions may read. See :func:`rl_vlm.data.images.load_image` for image specs.

Bad rows never kill a run. Structural problems (unparsable line, missing or empty problem or
answer, malformed image spec) are found when the files are read; problems that need the pixels
(missing or undecodable image, prompt too long) are found when the row is first fetched, so a
40k-row dataset does not decode every image up front. Either way the row is logged (logger
``rl_vlm.data``) with its file and row number, recorded in ``RowDataset.skipped`` and skipped;
rows found bad on fetch are also in ``RowDataset.bad_rows``. The samplers that walk a dataset are
in :mod:`rl_vlm.data.sampling`.
Row numbers are 1-based line numbers for JSONL (what an editor shows) and 0-based row indices
for Parquet (what ``pyarrow``/``pandas`` show); every message says which.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from rl_vlm.batch import Prompt
from rl_vlm.data.images import (
    load_image,
    num_visual_tokens,
    resize_image,
    validate_image_spec,
)
from rl_vlm.data.prompt import render_prompt, user_text

log = logging.getLogger("rl_vlm.data")

SUPPORTED_EXTENSIONS = (".jsonl", ".parquet")
IMAGE_PAD = "<|image_pad|>"
"""The placeholder the chat template emits once per image; the engine expands it to the image's
visual tokens."""


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of the dataset: where it is and why."""

    file: str
    row: int
    """1-based line number when ``numbering == "line"`` (JSONL), 0-based row index when
    ``numbering == "index"`` (Parquet)."""
    reason: str
    numbering: Literal["line", "index"] = "line"

    @property
    def location(self) -> str:
        """``<file> line N (1-based line number)`` or ``<file> row N (0-based row index)``."""
        if self.numbering == "line":
            return f"{self.file} line {self.row} (1-based line number)"
        return f"{self.file} row {self.row} (0-based row index)"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass(frozen=True)
class _Row:
    """A structurally valid row; its images are still specs (decoded on access)."""

    file: str
    row: int
    numbering: Literal["line", "index"]
    fields: dict[str, Any]
    """Every field except the images, with ``answer`` as a string."""
    images: list[Any]


def _check_files(files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[str]:
    """The data files as strings; raises naming the first missing or unsupported one."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]  # a single name would otherwise be iterated character by character
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise ValueError("no data files given")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path!r} does not exist")
        ext = os.path.splitext(path)[1].lower()
        if ext not in SUPPORTED_EXTENSIONS:
            raise ValueError(f"data file {path!r} has unsupported extension {ext!r} "
                             f"(use one of {', '.join(SUPPORTED_EXTENSIONS)})")
    return paths


def _read_jsonl(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(1-based line number, parsed value, parse error) for each non-blank line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            # Decoding per line (not per file) turns one bad byte into one skipped row.
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield n, None, f"line is not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) are not rows
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as e:
                yield n, None, f"invalid JSON: {e.msg} at column {e.colno}"


def _read_parquet(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(0-based row index, row dict, None) for each row."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        # Batch-wise conversion keeps only one copy of the (possibly image-bytes-heavy) rows alive.
        index = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield index, row, None
                index += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid/ArrowIOError derive from these
        raise ValueError(f"data file {path!r} cannot be read as Parquet: {e}") from e


def _parse_row(raw: Any) -> tuple[dict[str, Any], list[Any]]:
    """Split a raw row into (fields without images, image specs); ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"row must be an object, got {type(raw).__name__}")
    problem = raw.get("problem")
    if problem is None:
        raise ValueError("'problem' is missing")
    if not isinstance(problem, str):
        raise ValueError(f"'problem' must be a string, got {type(problem).__name__}")
    if not problem.strip():
        raise ValueError("'problem' is empty")
    answer = raw.get("answer")
    if answer is None:
        raise ValueError("'answer' is missing")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"'answer' must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise ValueError(f"'answer' is {answer}")
    answer = str(answer)  # reward functions compare text; 42 and "42" are the same ground truth
    if not answer.strip():
        raise ValueError("'answer' is empty")
    key = "images" if raw.get("images") is not None else "image"
    images = raw.get(key)
    if images is None:
        raise ValueError("'images' is missing")
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("'images' is empty")
    for k, spec in enumerate(images):
        try:
            validate_image_spec(spec)
        except ValueError as e:
            raise ValueError(f"image {k}: {e}") from None
    # Images are left out of the row: it travels to every reward call, and image bytes are heavy.
    fields = {k: v for k, v in raw.items() if k not in ("images", "image")}
    fields["answer"] = answer
    return fields, list(images)


def _describe(spec: Any) -> str:
    """Short human description of an image spec for messages (never dumps bytes)."""
    if isinstance(spec, dict):
        spec = spec["bytes"] if spec.get("bytes") is not None else spec.get("path")
    if isinstance(spec, (bytes, bytearray)):
        return f"<{len(spec)} bytes>"
    return repr(os.fspath(spec))


class RowDataset:
    """All structurally valid rows of ``files``, turned into :class:`Prompt` on access.

    Args:
        files: ``.jsonl`` or ``.parquet`` files, read completely here.
        processor: a HF processor (its ``.tokenizer`` is used for counting) or a tokenizer; it
            must have ``apply_chat_template`` and treat ``<|image_pad|>`` as one token.
        template: a prompt template name from :mod:`rl_vlm.data.prompt`.
        min_pixels, max_pixels: image bounds for :func:`~rl_vlm.data.images.smart_resize`.
        max_prompt_length: rows whose prompt (visual tokens included) is longer are skipped.

    Raises:
        FileNotFoundError / ValueError naming the file when a file is missing, has an unsupported
        extension or is not readable; ValueError naming the files when no valid row remains;
        KeyError for an unknown template.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], processor: Any, template: str, min_pixels: int,
                 max_pixels: int, max_prompt_length: int) -> None:
        self.files = _check_files(files)
        user_text("", template)  # an unknown template fails now, not on the first fetch
        self.processor, self.template = processor, template
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.min_pixels, self.max_pixels, self.max_prompt_length = min_pixels, max_pixels, max_prompt_length
        pad_ids = self.tokenizer(IMAGE_PAD, add_special_tokens=False).input_ids
        if len(pad_ids) != 1:
            # The prompt-length formula swaps exactly one token per image for its visual tokens.
            raise ValueError(f"the tokenizer splits {IMAGE_PAD} into {len(pad_ids)} tokens; it must be one")
        self._image_pad_id: int = pad_ids[0]
        self.skipped: list[SkippedRow] = []
        """Every row left out so far: structural problems at construction, then rows found bad on access."""
        self._rows: list[_Row] = []
        self._bad: dict[int, SkippedRow] = {}
        """Rows found bad on fetch, by index; a dict keeps the order they were found in."""
        for path in self.files:
            numbering: Literal["line", "index"] = "line" if path.lower().endswith(".jsonl") else "index"
            reader = _read_jsonl if numbering == "line" else _read_parquet
            n_valid, n_skipped = len(self._rows), len(self.skipped)
            for row, raw, error in reader(path):
                if error is None:
                    try:
                        fields, images = _parse_row(raw)
                    except ValueError as e:
                        error = str(e)
                if error is not None:
                    self._skip(SkippedRow(path, row, error, numbering))
                    continue
                self._rows.append(_Row(path, row, numbering, fields, images))
            log.info("%s: %d valid rows, %d skipped", path, len(self._rows) - n_valid, len(self.skipped) - n_skipped)
        if not self._rows:
            reasons = "; ".join(str(s) for s in self.skipped[:3])
            raise ValueError(f"no valid rows in {self.files} ({len(self.skipped)} skipped"
                             + (f", e.g. {reasons})" if reasons else ")"))

    def __len__(self) -> int:
        """Number of structurally valid rows (rows found bad later still count)."""
        return len(self._rows)

    @property
    def num_bad(self) -> int:
        """Rows that passed the structural check but turned out bad when fetched."""
        return len(self._bad)

    @property
    def bad_rows(self) -> list[SkippedRow]:
        """The rows counted by :attr:`num_bad`, each once, in the order found (:attr:`skipped`
        also has the rows dropped when the files were read)."""
        return list(self._bad.values())

    def bad_row(self, i: int) -> SkippedRow | None:
        """Why row ``i`` turned out bad when fetched; None if it has not (or not yet: a row is
        checked on its first fetch)."""
        return self._bad.get(i)

    def fields(self, i: int) -> Mapping[str, Any]:
        """Row ``i``'s fields (all but the images, ``answer`` as a string), read-only; decodes
        nothing, so selecting rows by a field (:class:`~rl_vlm.data.sampling.TaskSubset`) is cheap."""
        return MappingProxyType(self._rows[i].fields)

    def _skip(self, skipped: SkippedRow) -> None:
        self.skipped.append(skipped)
        log.warning("skipping data row: %s", skipped)

    def _reject(self, i: int, reason: str) -> None:
        r = self._rows[i]
        self._bad[i] = SkippedRow(r.file, r.row, reason, r.numbering)
        self._skip(self._bad[i])

    def get(self, i: int) -> Prompt | None:
        """The prompt of row ``i`` (file order), or None if the row turned out bad.

        Decodes and resizes the row's images and renders the prompt on every call (nothing is
        cached, so memory stays flat). A bad row is reported once and returns None afterwards.
        """
        if not 0 <= i < len(self._rows):
            raise IndexError(f"row {i} out of range for a dataset of {len(self._rows)} rows")
        if i in self._bad:
            return None
        r = self._rows[i]
        base_dir = os.path.dirname(os.path.abspath(r.file))
        images = []
        for k, spec in enumerate(r.images):
            try:
                images.append(resize_image(load_image(spec, base_dir), self.min_pixels, self.max_pixels))
            # Any failure to decode or resize (OSError, PIL's SyntaxError for broken PNGs,
            # DecompressionBombError, an aspect ratio over 200...) makes this row unusable, not the run.
            except Exception as e:  # noqa: BLE001
                self._reject(i, f"image {k} {_describe(spec)} cannot be used: {type(e).__name__}: {e}")
                return None
        text = render_prompt(self.processor, r.fields["problem"], len(images), self.template)
        ids = self.tokenizer(text).input_ids
        n_pads = ids.count(self._image_pad_id)
        if n_pads != len(images):
            self._reject(i, f"prompt has {n_pads} {IMAGE_PAD} tokens for {len(images)} images "
                            f"(does the problem text contain the placeholder?)")
            return None
        # The engine expands each <|image_pad|> to the image's visual tokens.
        length = len(ids) - n_pads + sum(num_visual_tokens(im.size) for im in images)
        if length > self.max_prompt_length:
            self._reject(i, f"prompt is {length} tokens (image tokens included) > "
                            f"data.max_prompt_length={self.max_prompt_length}")
            return None
        uid = r.fields.get("uid")
        uid = str(uid) if uid is not None else f"{os.path.basename(r.file)}:{r.row}"
        return Prompt(uid=uid, prompt_text=text, images=images, row=dict(r.fields))

