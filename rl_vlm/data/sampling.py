"""Samplers: which prompts each training step gets, in a seeded and resumable order.

* :class:`PromptSampler` -- a seeded per-epoch order over one dataset (the run without a curriculum).
* :class:`MixtureSampler` -- weighted draws over several sources (a curriculum stage, see
  :mod:`rl_vlm.driver.curriculum`), optionally steered to the learnable frontier by a
  :class:`DifficultyTracker` (``w(p)``: :func:`frontier_weight`).
* :class:`TaskSubset` -- the rows of a dataset with one ``task`` field, as a source.

Both samplers satisfy :class:`Sampler`, the interface the driver uses; what a sampler needs of a
dataset is :class:`RowSource` (a :class:`~rl_vlm.data.dataset.RowDataset` or a :class:`TaskSubset`).

Bad rows. A row found bad when drawn is replaced by the next one, so batches stay full. A sampler
remembers each bad row once: ``num_skipped`` (the driver's ``data/skipped``) is the number of
distinct bad rows it has met, ``bad_rows`` which ones (file, row number, reason), both kept in
its ``state_dict``; :class:`rl_vlm.data.skipped.SkippedRowsLog` writes them to the run directory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rl_vlm import seeds
from rl_vlm.batch import Prompt
from rl_vlm.config import DifficultyConfig
from rl_vlm.data.dataset import RowDataset, SkippedRow

FRONTIER = (0.2, 0.8)
"""Pass rates counted as the learnable frontier in ``data/frontier_frac``."""
MAX_REJECTIONS = 1000
"""A sampler keeps the next candidate after this many consecutive difficulty rejections (bounds
the work when every row looks solved)."""


# ------------------------------------------------------------------------------ interfaces
class RowSource(Protocol):
    """What a sampler needs of a dataset (:class:`~rl_vlm.data.dataset.RowDataset`, :class:`TaskSubset`)."""

    @property
    def files(self) -> Sequence[str]:
        """For messages: the files the rows come from."""
        ...

    def __len__(self) -> int: ...

    def get(self, i: int) -> Prompt | None:
        """Row ``i``'s prompt, or None when the row is bad."""
        ...

    @property
    def num_bad(self) -> int:
        """Rows known to be bad (the sampler stops when every row is)."""
        ...

    def bad_row(self, i: int) -> SkippedRow | None:
        """Why row ``i`` is bad; not None whenever :meth:`get` returned None for it."""
        ...


@runtime_checkable
class Sampler(Protocol):
    """What the driver asks of a training sampler (:class:`PromptSampler`, :class:`MixtureSampler`)."""

    @property
    def epoch(self) -> int:
        """Current epoch, 0-based (for a mixture: the furthest any source has reached)."""
        ...

    @property
    def num_skipped(self) -> int:
        """Distinct bad rows met so far (``data/skipped``)."""
        ...

    @property
    def bad_rows(self) -> list[SkippedRow]:
        """Those rows, each once."""
        ...

    def next_batch(self) -> list[Prompt]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ------------------------------------------------------------------------------ one dataset
class PromptSampler:
    """Batches of prompts in a seeded per-epoch order over a :class:`RowSource`; resumable.

    Epoch ``e`` visits every row once in the permutation seeded by ``seed + e`` (file order when
    ``shuffle`` is False). Bad rows are skipped and replaced by the next rows, so every batch is
    full; a batch may span two epochs (and so repeat a row when the dataset is smaller than a batch).
    """

    def __init__(self, dataset: RowSource, batch_size: int, seed: int, shuffle: bool = True) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.epoch = 0
        """Current epoch (0-based); it advances when the first row of the next epoch is drawn."""
        self.position = 0
        """Rows drawn so far in the current epoch (an index into its permutation)."""
        self.consumed = 0
        """Rows drawn in total, bad ones included."""
        self._bad: dict[int, SkippedRow] = {}
        """Bad rows met so far, by dataset index; a dict keeps the order they were found in."""
        self._skipped_floor = 0
        """What an old checkpoint counted as skipped (see :meth:`load_state_dict`)."""
        self._order = self._permutation(0)

    @property
    def num_skipped(self) -> int:
        """Distinct bad rows met so far; a row drawn again in a later epoch is not counted again."""
        return max(len(self._bad), self._skipped_floor)

    @property
    def bad_rows(self) -> list[SkippedRow]:
        """The bad rows met so far, each once, in the order found."""
        return list(self._bad.values())

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            # random.Random with an int seed is stable across platforms and Python versions.
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[Prompt]:
        """The next ``batch_size`` valid prompts.

        Raises RuntimeError when every row of the dataset has turned out bad.
        """
        batch: list[Prompt] = []
        while len(batch) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            i = self._order[self.position]
            self.position += 1
            self.consumed += 1
            prompt = self.dataset.get(i)
            if prompt is None:
                if i not in self._bad:
                    self._bad[i] = self._why(i)
                if self.dataset.num_bad == len(self.dataset):
                    raise RuntimeError(f"every row of {self.dataset.files} is bad; see the 'skipping data row' "
                                       f"warnings of logger rl_vlm.data")
                continue
            batch.append(prompt)
        return batch

    def _why(self, i: int) -> SkippedRow:
        record = self.dataset.bad_row(i)
        if record is None:  # the RowSource contract: a row without a prompt has a reason
            raise RuntimeError(f"{self.dataset.files}: row {i} gave no prompt but bad_row({i}) is None")
        return record

    def first(self, n: int) -> list[Prompt]:
        """The first ``n`` valid prompts in file order (fewer if the dataset has fewer); for
        validation. Does not move the sampler."""
        out: list[Prompt] = []
        for i in range(len(self.dataset)):
            if len(out) >= n:
                break
            prompt = self.dataset.get(i)
            if prompt is not None:
                out.append(prompt)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position; :meth:`load_state_dict` on a sampler over the same files continues
        with exactly the batches this one would have produced."""
        return {"epoch": self.epoch, "position": self.position, "consumed": self.consumed,
                "num_skipped": self.num_skipped, "seed": self.seed, "shuffle": self.shuffle,
                "num_rows": len(self.dataset),
                # With the reasons: the resumed dataset finds bad rows again only when drawn.
                "bad_rows": [{"index": i, **asdict(r)} for i, r in self._bad.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; ValueError if the seed, shuffling or dataset size differ
        (the future batches would silently be different ones).

        A state saved before ``bad_rows`` existed counted a bad row at every draw; that count is
        kept as ``num_skipped``'s floor (it may over-count; guessing it down could under-count),
        and the rows are listed again as they are met.
        """
        mine = {"seed": self.seed, "shuffle": self.shuffle, "num_rows": len(self.dataset)}
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has {value!r}")
        if not 0 <= state["position"] <= len(self.dataset):
            raise ValueError(f"sampler state position {state['position']} is outside 0..{len(self.dataset)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.consumed, self._skipped_floor = int(state["consumed"]), int(state["num_skipped"])
        bad = state["bad_rows"] if "bad_rows" in state else []  # absent in old checkpoints
        self._bad = {int(b["index"]): SkippedRow(b["file"], int(b["row"]), b["reason"], b["numbering"]) for b in bad}
        self._order = self._permutation(self.epoch)


# ------------------------------------------------------------------------------ difficulty
def frontier_weight(p: float, floor: float) -> float:
    """w(p) = floor + (1 - floor) * 4 p (1 - p): 1 at p = 0.5, ``floor`` at p = 0 or 1."""
    return floor + (1.0 - floor) * 4.0 * p * (1.0 - p)


class DifficultyTracker:
    """Online pass-rate estimates per row uid or per task (EMA of group mean accuracy)."""

    def __init__(self, cfg: DifficultyConfig) -> None:
        self.cfg = cfg
        self.pass_rate: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "off"

    def key(self, prompt: Prompt) -> str:
        if self.cfg.mode == "uid":
            return prompt.uid
        return str(prompt.row.get("task", ""))

    def observe(self, prompts: Sequence[Prompt], group_accuracy: Sequence[float]) -> None:
        """Update the estimate of each prompt's key with its group's mean accuracy."""
        if not self.enabled:
            return
        for p, acc in zip(prompts, group_accuracy, strict=True):
            k = self.key(p)
            old = self.pass_rate.get(k)
            self.pass_rate[k] = float(acc) if old is None else (1 - self.cfg.ema) * old + self.cfg.ema * float(acc)

    def accept_prob(self, prompt: Prompt) -> float:
        p = self.pass_rate.get(self.key(prompt))
        return 1.0 if p is None else frontier_weight(p, self.cfg.floor)

    def metrics(self, prompts: Sequence[Prompt]) -> dict[str, float]:
        if not self.enabled:
            return {}
        rates = [self.pass_rate[k] for k in (self.key(p) for p in prompts) if k in self.pass_rate]
        out = {"data/difficulty_keys": float(len(self.pass_rate))}
        if rates:
            out["data/difficulty_mean"] = 1.0 - sum(rates) / len(rates)
            out["data/frontier_frac"] = sum(FRONTIER[0] <= r <= FRONTIER[1] for r in rates) / len(rates)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "pass_rate": dict(self.pass_rate)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Estimates of another mode are keyed differently; starting afresh is the honest choice.
        self.pass_rate = dict(state["pass_rate"]) if state["mode"] == self.cfg.mode else {}


# ------------------------------------------------------------------------------ several sources
class TaskSubset:
    """The rows of a :class:`~rl_vlm.data.dataset.RowDataset` whose ``task`` field is ``task``,
    as a :class:`RowSource`."""

    def __init__(self, dataset: RowDataset, task: str) -> None:
        self.dataset, self.task = dataset, task
        self.index = [i for i in range(len(dataset)) if str(dataset.fields(i).get("task", "")) == task]
        if not self.index:
            raise ValueError(f"no row of {dataset.files} has task={task!r}")
        self.files = [f"{f} (task={task})" for f in dataset.files]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_bad(self) -> int:
        return sum(self.dataset.bad_row(i) is not None for i in self.index)

    @property
    def bad_rows(self) -> list[SkippedRow]:
        """This subset's share of the dataset's :attr:`~rl_vlm.data.dataset.RowDataset.bad_rows`,
        in the order found."""
        mine = {self.dataset.bad_row(i) for i in self.index}
        return [r for r in self.dataset.bad_rows if r in mine]

    def bad_row(self, i: int) -> SkippedRow | None:
        return self.dataset.bad_row(self.index[i])

    def get(self, i: int) -> Prompt | None:
        return self.dataset.get(self.index[i])


class MixtureSampler:
    """Batches drawn from several datasets with weights, seeded and resumable.

    Draw number d picks source k with probability weight_k / Σ weight from
    ``numpy.random.default_rng([seed, d])`` (a pure function of the seed and the draw count, so
    the state is that count plus each source's :class:`PromptSampler` position); the source's
    sampler gives its next row in its own seeded per-epoch order. With a
    :class:`DifficultyTracker`, a candidate is kept with probability ``accept_prob`` (same RNG).
    """

    def __init__(self, datasets: Sequence[RowSource], weights: Sequence[float], batch_size: int, seed: int,
                 shuffle: bool = True, difficulty: DifficultyTracker | None = None) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"{len(datasets)} datasets for {len(weights)} weights")
        total = float(sum(weights))
        if not total > 0 or min(weights) < 0:
            raise ValueError(f"source weights {list(weights)} must be >= 0 and sum to > 0")
        self.probs = np.asarray(weights, dtype=np.float64) / total
        self.batch_size, self.seed, self.difficulty = batch_size, seed, difficulty
        self.samplers = [PromptSampler(ds, 1, seed=seeds.mixture_source(seed, k), shuffle=shuffle)
                         for k, ds in enumerate(datasets)]
        self.draws = 0
        self.num_rejected = 0
        """Candidates skipped by difficulty-aware sampling."""

    @property
    def epoch(self) -> int:
        """The largest epoch any source has reached."""
        return max(s.epoch for s in self.samplers)

    @property
    def bad_rows(self) -> list[SkippedRow]:
        """The sources' bad rows, each once (two sources may share a file), source by source in
        the order each found them."""
        unique: dict[tuple[str, int], SkippedRow] = {}
        for s in self.samplers:
            for r in s.bad_rows:
                unique.setdefault((r.file, r.row), r)
        return list(unique.values())

    @property
    def num_skipped(self) -> int:
        # A source resumed from an old checkpoint may count more than it lists (its per-draw
        # count, PromptSampler.load_state_dict); that surplus is kept.
        return len(self.bad_rows) + sum(s.num_skipped - len(s.bad_rows) for s in self.samplers)

    def next_batch(self) -> list[Prompt]:
        batch: list[Prompt] = []
        rejections = 0
        while len(batch) < self.batch_size:
            rng = np.random.default_rng([self.seed, self.draws])
            self.draws += 1
            k = min(int(np.searchsorted(np.cumsum(self.probs), rng.random(), side="right")), len(self.probs) - 1)
            prompt = self.samplers[k].next_batch()[0]
            if self.difficulty is not None and self.difficulty.enabled and rejections < MAX_REJECTIONS:
                if rng.random() >= self.difficulty.accept_prob(prompt):
                    rejections += 1
                    self.num_rejected += 1
                    continue
            rejections = 0
            batch.append(prompt)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "num_rejected": self.num_rejected,
                "sources": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["sources"]) != len(self.samplers):
            raise ValueError(f"sampler state has {len(state['sources'])} sources but this sampler has "
                             f"{len(self.samplers)}")
        for s, st in zip(self.samplers, state["sources"], strict=True):
            s.load_state_dict(st)
        self.draws, self.num_rejected = int(state["draws"]), int(state["num_rejected"])
