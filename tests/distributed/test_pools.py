"""The two pools' own logic (rl_vlm.distributed.pools) without Ray: the actor group is replaced
by an in-process one whose "actors" are stand-ins, so what is checked is the pools' splitting,
scattering, gathering and summing, and that they satisfy the driver's Protocols."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from rl_vlm.batch import LearnerBatch, Prompt, StepShape
from rl_vlm.config import Config
from rl_vlm.distributed import pools
from rl_vlm.distributed.group import Fail, Restart
from rl_vlm.distributed.interfaces import LearnerPool, RolloutPool
from rl_vlm.distributed.runtime import PoolLayout
from rl_vlm.distributed.workers.rollout import SampleOut


class FakeLearner:
    def __init__(self, rank: int, world_size: int, *_: Any) -> None:
        self.rank, self.world_size = rank, world_size
        self.shard: Any = None
        self.sft_denominators: list[float] = []

    def free_address(self) -> tuple[str, int]:
        assert self.rank == 0
        return "127.0.0.1", 29500

    def init(self, addr: str, port: int, gas: int) -> int:
        self.gas = gas
        return 1234

    def set_batch(self, shard: Any) -> None:
        self.shard = shard

    def compute_logprobs(self, which: str) -> list[torch.Tensor]:
        # Each sequence's value is its prompt id: the gathered list must be in global order.
        return [torch.tensor([float(p[0])]) for p in self.shard.prompt_ids]

    def update(self, adv: list[torch.Tensor], old: list[torch.Tensor], ref: list[torch.Tensor] | None) -> dict[str, float]:
        assert [float(a[0]) for a in adv] == [float(p[0]) for p in self.shard.prompt_ids]
        return {"seqs": float(len(adv)), "has_ref": float(ref is not None)}

    def sft_update(self, weights: list[float], num_tokens: list[float]) -> dict[str, float]:
        self.sft_denominators = num_tokens
        return {"sft/loss": sum(weights)}

    def publish_weights(self, bucket_bytes: int) -> list[str]:
        return [f"bucket{b}-rank{self.rank}" for b in range(2)]


class FakeEngine:
    def __init__(self, model_path: str, cfg: Any, seed: int, device: str, max_model_len: int,
                 cpu_affinity: tuple[int, ...], lora: Any, sleep_mode: bool) -> None:
        self.seed, self.loaded, self.max_model_len = seed, None, max_model_len
        self.log: list[str] = []

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[SampleOut]:
        return [SampleOut([1], [len(p.uid)] * (j + 1), [0.0] * (j + 1), f"{p.uid}/{j}/{seed}", False)
                for p in prompts for j in range(n)]

    def load_buckets(self, refs: Any, version: int) -> int:
        self.loaded = refs
        self.log.append(f"load {version}")
        return version

    def load_adapter(self, adapter: Any, version: int) -> int:
        self.loaded = adapter
        self.log.append(f"adapter {version}")
        return version

    def sleep(self) -> None:
        self.log.append("sleep")

    def wake(self, tags: list[str]) -> None:
        self.log.append(f"wake {','.join(tags)}")


class InProcessGroup:
    """Stands in for ActorGroup: same calls, actors are plain objects called directly."""

    def __init__(self, actor_cls: type, bundles: Any, args_per_actor: Any, *, name: str, what: str,
                 policy: Any, pg: Any = None, share: float = 1.0) -> None:
        fake = FakeLearner if what == "learner rank" else FakeEngine
        self.actors = [fake(*a) for a in args_per_actor]
        self.what, self.policy, self.pg, self.restarts = what, policy, pg, 0

    def call(self, method: str, *args: Any) -> list[Any]:
        return [getattr(a, method)(*args) for a in self.actors]

    def call_each(self, method: str, args_per_actor: Any) -> list[Any]:
        items = (sorted(args_per_actor.items()) if isinstance(args_per_actor, dict)
                 else list(enumerate(args_per_actor)))
        return [getattr(self.actors[i], method)(*a) for i, a in items]

    def submit(self, method: str, *args: Any) -> list[Any]:
        return self.call(method, *args)

    def wait(self, futures: list[Any]) -> list[Any]:
        return futures


@pytest.fixture
def cfg(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setattr(pools, "ActorGroup", InProcessGroup)
    c = Config()
    # 2 prompts x 4 samples, mini-batch of 1 prompt, 2 ranks, micro-batch 2.
    return dataclasses.replace(c, rollout=dataclasses.replace(c.rollout, n=4, num_engines=3),
                               learner=dataclasses.replace(c.learner, num_ranks=2, mini_batch_size=1,
                                                           micro_batch_size=2))


LAYOUT = PoolLayout([{"CPU": 1.0}] * 3, [{"CPU": 1.0}] * 2, "gloo")
SHAPE = StepShape(mini_batch_size=1, group_size=4, max_response_len=16, temperature=1.0, step=1, total_steps=2)


def _batch() -> LearnerBatch:
    imgs = [["a"], ["b"]]
    lengths = [3, 0, 2, 5, 1, 4, 0, 6]
    return LearnerBatch([[100 + i] for i in range(8)], [[7] * n for n in lengths], [imgs[i // 4] for i in range(8)])


def test_learner_pool_scatters_and_gathers_in_global_order(cfg: Config) -> None:
    lp = pools.LearnerGroup(cfg, LAYOUT, "cpu")
    assert isinstance(lp.group.policy, Fail)
    assert lp.num_params == 1234
    assert [a.gas for a in lp.actors] == [1, 1]  # 4 sequences per mini-batch / 2 ranks / micro 2
    lp.set_batch(_batch(), SHAPE)
    assert lp.assignment == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert lp.device_mini_batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lp.actors[1].shard.prompt_ids == [[102], [103], [106], [107]]
    assert [float(v[0]) for v in lp.compute_logprobs()] == [100.0 + i for i in range(8)]
    adv = [torch.tensor([100.0 + i]) for i in range(8)]
    assert lp.update(adv, adv, None) == {"seqs": 8.0, "has_ref": 0.0}  # summed over ranks
    weights = [1.0] * 6 + [0.0] * 2
    assert lp.sft_update(weights, [3, 0, 2, 5, 1, 4, 0, 6]) == {"sft/loss": 6.0}
    assert lp.actors[0].sft_denominators == [10.0, 5.0]  # padding (6, 7) adds no tokens
    assert lp.publish_weights() == [["bucket0-rank0", "bucket0-rank1"], ["bucket1-rank0", "bucket1-rank1"]]


def test_rollout_pool_splits_prompts_and_keeps_group_major_order(cfg: Config) -> None:
    rp = pools.RolloutGroup(cfg, LAYOUT, "cpu")
    assert isinstance(rp.group.policy, Restart)
    assert [a.seed for a in rp.actors] == [cfg.trainer.seed + 1000 * i for i in range(3)]
    prompts = [Prompt(f"p{i}", "", [], {}) for i in range(2)]  # fewer prompts than engines
    out = rp.generate(prompts, 2, 1.0, 1.0, seed=5)
    # Engine 0 gets no prompt and is not called; engines 1 and 2 one prompt each, their seeds.
    assert out.response_texts == ["p0/0/7924", "p0/1/7924", "p1/0/15843", "p1/1/15843"]
    assert out.weight_version == 0
    assert rp.load_weights([["ref"]], 3) == [3, 3, 3]
    assert rp.weight_version == 3 and all(a.loaded == [["ref"]] for a in rp.actors)
    # In a weight-sync group a dead engine cannot be taken back: fail instead of restarting.
    rp.collective = True
    assert isinstance(rp.group.policy, Fail)
    rp.collective = False
    assert isinstance(rp.group.policy, Restart)


def test_sleeping_engines_wake_weights_first_then_the_kv_cache(cfg: Config) -> None:
    """Colocated pools: the engines sleep for the learners' turn; a sync wakes the weights, loads
    into them, then wakes the KV cache (vLLM's order for an in-place update). Awake engines just load."""
    from rl_vlm.distributed.sync.adapter import AdapterWeights

    rp = pools.RolloutGroup(cfg, LAYOUT, "cpu")
    rp.load_weights([["ref"]], 1)
    rp.sleep()
    adapter = AdapterWeights("ref", "{}", 8)
    assert rp.load_weights(adapter, 2) == [2, 2, 2]
    rp.load_weights([["ref"]], 3)
    assert all(a.log == ["load 1", "sleep", "wake weights", "adapter 2", "wake kv_cache", "load 3"]
               for a in rp.actors), rp.actors[0].log
    assert rp.weight_version == 3


def _members(proto: type) -> set[str]:
    return {m for m in vars(proto) if not m.startswith("_")}


def test_pools_have_every_member_of_the_driver_protocols(cfg: Config) -> None:
    # By name only; mypy checks the signatures (System is typed with the Protocols).
    assert {"generate", "load_weights", "weight_version", "restarts"} <= _members(RolloutPool)
    assert all(hasattr(pools.RolloutGroup(cfg, LAYOUT, "cpu"), m) for m in _members(RolloutPool))
    assert all(hasattr(pools.LearnerGroup(cfg, LAYOUT, "cpu"), m) for m in _members(LearnerPool))
