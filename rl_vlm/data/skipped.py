"""``<run_dir>/skipped_rows.jsonl``: every bad row the training samplers met, one JSON line each.

``data/skipped`` says how many rows are bad; this file says which and why, in a form a script can
read (a console warning scrolls away, and is repeated by every run that meets the row)::

    {"file": "data/train.jsonl", "row": 17, "reason": "image 0 'img/x.png' cannot be used: ...", "numbering": "line"}

``row`` is a 1-based line number when ``numbering`` is ``"line"`` (JSONL) and a 0-based row index
when it is ``"index"`` (Parquet), as in :class:`~rl_vlm.data.dataset.SkippedRow`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict

from rl_vlm.data.dataset import SkippedRow
from rl_vlm.data.sampling import Sampler

log = logging.getLogger("rl_vlm.data")

SKIPPED_ROWS_FILE = "skipped_rows.jsonl"
"""Its name in the run directory."""


class SkippedRowsLog:
    """Appends each newly met bad row of the samplers to ``path`` once.

    Call :meth:`update` after every step. A row is one ``(file, row)``; one already in the file is
    not written again, also by a later instance on the same file (a resumed or restarted run
    reads the file back here), so the file lists each bad row exactly once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._written: set[tuple[str, int]] = set()
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            # A line cut short by a crash mid-write: drop it (its row is written again when next
            # met) so the file stays valid JSONL and the next line does not run on from it.
            data = data[: data.rfind(b"\n") + 1]
            os.truncate(self.path, len(data))
            log.warning("%s ended in a partial line; removed it", self.path)
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._written.add((str(entry["file"]), int(entry["row"])))
            except (ValueError, KeyError, TypeError):  # edited by hand; the run does not die on it
                log.warning("%s line %d is not a skipped-row entry; ignored", self.path, n)

    def __len__(self) -> int:
        """Rows in the file."""
        return len(self._written)

    def update(self, samplers: Sampler | Iterable[Sampler]) -> list[SkippedRow]:
        """Append the samplers' bad rows not in the file yet (e.g. every curriculum stage's
        sampler); returns them."""
        todo = [samplers] if isinstance(samplers, Sampler) else list(samplers)
        new: dict[tuple[str, int], SkippedRow] = {}  # samplers of two stages may share a row
        for sampler in todo:
            for r in sampler.bad_rows:
                if (r.file, r.row) not in self._written:
                    new.setdefault((r.file, r.row), r)
        if new:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(asdict(r)) + "\n" for r in new.values()))
            self._written.update(new)  # after the write: a failed one is retried next step
        return list(new.values())
