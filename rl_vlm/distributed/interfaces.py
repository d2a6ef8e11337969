"""The typed seams between the driver and the distributed code: what the loop, the curriculum and
the checkpoint code may call on the two pools, as ``typing.Protocol``s.

The driver and checkpoint packages type against these, never against the Ray classes in
:mod:`rl_vlm.distributed.pools`, so they can be read (and faked in tests) without Ray; anything
not listed here is the pools' own business (actor handles, placement groups, weight-sync
wiring). Importing this module imports no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rl_vlm.distributed.sync.adapter import AdapterWeights
from rl_vlm.distributed.sync.collective import CollectiveSync

if TYPE_CHECKING:
    import torch

    from rl_vlm.batch import LearnerBatch, Prompt, RolloutBatch, StepShape
    from rl_vlm.config import Config


ObjectRef = Any
"""A Ray ``ObjectRef``. Opaque to everything outside the actors, and naming Ray's own class
would import Ray into the driver's types, hence ``Any`` under a name."""

WeightRefs = list[list[ObjectRef]]
"""Object-store weight sync: ``refs[b][r]`` is learner rank r's part of bucket b."""

PublishedWeights = WeightRefs | CollectiveSync | AdapterWeights
"""What :meth:`LearnerPool.publish_weights` returns and :meth:`RolloutPool.load_weights` takes:
the buckets in the object store, a collective broadcast in flight, or (``model.lora``) the
adapter alone."""

LogprobModel = Literal["policy", "reference", "ema"]
"""Whose log-probs :meth:`LearnerPool.compute_logprobs` computes: the policy being trained, the
frozen KL reference, or the EMA reference (GRPO-CARE)."""


class RolloutPool(Protocol):
    """The vLLM engines: sampling and receiving weights."""

    @property
    def weight_version(self) -> int:
        """The policy version the engines hold (the step whose weights they last loaded)."""
        ...

    @property
    def restarts(self) -> int:
        """Engines restarted after their process died, since the pool started."""
        ...

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float,
                 seed: int) -> RolloutBatch:
        """``n`` samples of every prompt, group-major; the same seed gives the same tokens."""
        ...

    def load_weights(self, refs: PublishedWeights, version: int) -> list[int]:
        """Every engine loads the published weights as ``version`` (waking first if asleep);
        returns each engine's version."""
        ...

    def sleep(self) -> None:
        """Colocated pools: free the engines' device memory for the learners' turn, until the
        next :meth:`load_weights`."""
        ...


class LearnerPool(Protocol):
    """The DeepSpeed ZeRO-3 ranks: per step, ``set_batch`` once, then log-prob passes and one
    update over that batch, then ``publish_weights``. Per-sequence inputs and outputs are in
    the batch's global order; the pool scatters them to and gathers them from the ranks."""

    @property
    def num_params(self) -> int:
        """Parameters of the policy (full, not per rank)."""
        ...

    @property
    def micro_batches(self) -> list[list[int]]:
        """Of the last ``set_batch``: global indices of every micro-batch (algorithm extras)."""
        ...

    @property
    def device_mini_batches(self) -> list[list[int]]:
        """Of the last ``set_batch``: global indices of every (mini-batch, rank) slice."""
        ...

    def set_batch(self, batch: LearnerBatch, shape: StepShape) -> None:
        """Split the step's sequences over the ranks and hand each rank its share."""
        ...

    def compute_logprobs(self, which: LogprobModel = "policy") -> list[torch.Tensor]:
        """[N] per-sequence response log-probs ([len(response)] each), no grad."""
        ...

    def compute_views(self) -> dict[str, list[torch.Tensor]]:
        """``view/<name>/<key>`` -> [N] per-sequence values of every algorithm view."""
        ...

    def update(self, advantages: list[torch.Tensor], old: list[torch.Tensor],
               ref: list[torch.Tensor] | None) -> dict[str, float]:
        """One optimizer step per mini-batch; metrics summed over ranks."""
        ...

    def sft_update(self, weights: list[float], response_lengths: list[int]) -> dict[str, float]:
        """Supervised step(s) on the batch (``weights``: 1 train, 0 padding); metrics summed over ranks."""
        ...

    def publish_weights(self) -> PublishedWeights:
        """Hand the current weights to the engines (see :data:`PublishedWeights`)."""
        ...

    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its shards into checkpoint directory ``path``."""
        ...

    def load_checkpoint(self, path: str) -> None:
        """Every rank restores what :meth:`save_checkpoint` wrote under ``path``."""
        ...

    def save_hf(self, out_dir: str) -> None:
        """Write a Hugging Face directory of the current policy."""
        ...


@dataclass
class Pools:
    """The two pools of one run."""

    rollout: RolloutPool
    learners: LearnerPool | None
    """None when only the rollout pool was asked for (evaluation)."""


class PoolProvider(Protocol):
    """Where a run gets its pools: :class:`rl_vlm.distributed.provider.FreshPools` (the default: a
    new Ray instance and new actors per run) or :class:`~rl_vlm.distributed.provider.SharedPools`
    (actors kept between runs of one process and re-pointed at each run's config); tests also
    pass in-process fakes. The driver calls :meth:`acquire` once per attempt of a run and
    :meth:`release` when the attempt ends."""

    def acquire(self, cfg: Config, with_learners: bool) -> Pools:
        """Pools for ``cfg`` (validated), holding ``model.path``'s weights, weight version 0."""
        ...

    def release(self, failed: bool) -> None:
        """The run is over; ``failed``: a worker died, nothing of these pools may be reused."""
        ...
