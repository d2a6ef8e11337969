"""A fake row source shared by the sampler and curriculum tests."""

from __future__ import annotations

from rl_vlm.batch import Prompt


class FakeDataset:
    """A RowSource (what PromptSampler needs of a RowDataset) without bad rows."""

    def __init__(self, name: str, n: int, task: str = "") -> None:
        self.name, self.n, self.files, self.num_bad = name, n, [f"{name}.jsonl"], 0
        self.task = task or name

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> Prompt:
        return Prompt(uid=f"{self.name}:{i}", prompt_text="", images=[],
                      row={"problem": "q", "answer": "yes", "task": self.task})

    def bad_row(self, i: int) -> None:
        return None


def _uids(batch: list[Prompt]) -> list[str]:
    return [p.uid for p in batch]
