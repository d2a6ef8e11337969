"""A one-device layout through the real stack: colocated pools (engine 0 and learner rank 0 in
the same placement-group bundle, taking turns) training LoRA adapters, the engine serving each
synced adapter. What a one-GPU user relies on: the engine's log-probs after every adapter sync
agree with the learner's, the KL reference is the base (adapter off), a checkpoint holds the
adapter only and resumes, and the export is the merged model the run ended with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rl_vlm.compose import compose
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a system of its own (engines with LoRA slots)

SYNC_TOL = 1e-3
"""As tests/e2e/test_train_e2e.py: fp32 on both sides, kernel order differs."""


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_colocated_lora_run_syncs_the_adapter_resumes_and_exports(warm_model_dir: Path, tmp_path: Path,
                                                                  shared_pools: SharedPools) -> None:
    from rl_vlm.checkpoint.export import export_checkpoint
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path / "data", max_train=32, max_test=4)
    run_dir = tmp_path / "run"

    def cfg(total: int, *extra: str):
        return compose([
            f"model.path={warm_model_dir}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
            "data.rollout_batch_size=2", "data.val_size=4", "rollout.n=4", "rollout.max_new_tokens=24",
            "cluster.colocate=true", "rollout.num_engines=1", "learner.num_ranks=1",
            "model.lora.rank=8", "model.lora.alpha=16", "learner.lr=2e-2",
            "learner.mini_batch_size=1", "learner.micro_batch_size=4", "algorithm.kl_coef=0.01",
            f"trainer.total_steps={total}", "trainer.val_every=0", "trainer.save_every=2",
            "trainer.progress_bar=false", f"trainer.output_dir={run_dir}", *extra])

    train(cfg(2), pools=shared_pools)
    train(cfg(3, "trainer.save_final_model=true"), pools=shared_pools)  # resumes after step 2

    by_step = {r["step"]: r for r in read_metrics(str(run_dir))}
    assert sorted(by_step) == [1, 2, 3]
    for s in (1, 2, 3):
        r = by_step[s]
        assert r["sync/version_min"] == s and "time/sleep_s" in r
    assert any(by_step[s]["actor/grad_norm"] > 0 for s in (1, 2, 3))  # a group with a reward spread
    # Steps 2 and 3 sampled with the adapter of the step before (step 3's from the checkpoint).
    for s in (2, 3):
        assert by_step[s]["rollout/logprob_max_diff"] < SYNC_TOL, by_step[s]["rollout/logprob_max_diff"]
    assert by_step[3]["actor/kl"] > 0  # the policy left the base, which is the reference
    prompts = [json.loads(line)["step"] for line in (run_dir / "prompts.jsonl").read_text().splitlines()]
    assert prompts == [1, 2, 3]

    checkpoint = max((run_dir / "checkpoints").iterdir())
    learner_bytes = sum(f.stat().st_size for f in (checkpoint / "learner").iterdir())
    base = _weights(warm_model_dir)
    assert learner_bytes < sum(t.numel() * t.element_size() for t in base.values()) / 2
    final = _weights(run_dir / "final")
    exported = _weights(Path(export_checkpoint(str(run_dir), str(tmp_path / "exported"))))
    assert final.keys() == exported.keys() == base.keys()
    assert all(torch.allclose(final[k], exported[k], atol=1e-6, rtol=0) for k in final)
    changed = {k for k in base if not torch.equal(base[k], final[k])}
    adapted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Only the adapted layers of the language model (saved as model.layers.<i>...; the ViT as visual.*).
    assert changed and all(k.startswith("model.layers.") and k.split(".")[-2] in adapted for k in changed), \
        sorted(changed)
