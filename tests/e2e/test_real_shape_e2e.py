"""The real-shape model through the real stack (Ray + vLLM + DeepSpeed ZeRO-3): Qwen2.5-VL's
151,936-token vocabulary, 1,024 visual tokens per prompt (896 x 896 images: 64 x 64 patches of
14 px, merged 2 x 2) and 256-token answers (random init: every answer runs to the limit).

What the tiny model cannot show: the engine and the learner agree on log-probs over the real
vocabulary after a weight sync, with prompts of 1 k+ tokens, and a step's memory fits. The file
follows the checkpoint file in its worker's group (tests/conftest.py), whose system it cannot
use: the real-shape system costs its own start and nobody else's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_vlm.compose import compose
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IMAGE_SIDE = 896
VISUAL_TOKENS = (IMAGE_SIDE // 28) ** 2  # 1,024
ANSWER_TOKENS = 256
# fp32 on both sides, as in tests/e2e/test_train_e2e.py: kernel order differs (vLLM's CPU
# attention vs SDPA), over 1.3 k positions and a 151,936-way softmax.
SYNC_TOL = 1e-3


def test_real_shapes_train_end_to_end(real_shape_model_dir: Path, tmp_path: Path, shared_pools: SharedPools) -> None:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train_file, test_file = convert_easy_vqa(tmp_path / "data", max_train=8, max_test=2)
    run_dir = tmp_path / "run"
    pixels = IMAGE_SIDE * IMAGE_SIDE
    cfg = compose([
        "model=real_shape", f"model.path={real_shape_model_dir}", f"model.min_pixels={pixels}",
        f"model.max_pixels={pixels}", f"data.train_files=[{train_file}]", f"data.val_files=[{test_file}]",
        "data.rollout_batch_size=1", "rollout.n=2", f"rollout.max_new_tokens={ANSWER_TOKENS}",
        # Random weights earn no reward: the entropy bonus (with its gradient over the real
        # vocabulary) moves the weights, so step 2 samples from synced weights that differ.
        "algorithm.entropy_coef=0.01",
        "learner.num_ranks=2", "learner.mini_batch_size=1", "learner.micro_batch_size=1", "learner.lr=1e-4",
        "trainer.total_steps=2", "trainer.val_every=0", "trainer.progress_bar=false", f"trainer.output_dir={run_dir}",
    ])
    train(cfg, pools=shared_pools)

    by_step = {r["step"]: r for r in read_metrics(str(run_dir))}
    assert sorted(by_step) == [1, 2]
    for s, r in by_step.items():
        assert r["sync/version_min"] == s
        assert r["prompt/length_max"] > VISUAL_TOKENS, r["prompt/length_max"]
        assert r["response/length_max"] == ANSWER_TOKENS
        assert r["actor/grad_norm"] > 0
    # Step 2 was sampled with the weights synced after step 1: engine and learner agree over the
    # real vocabulary.
    assert by_step[2]["rollout/logprob_max_diff"] < SYNC_TOL, by_step[2]["rollout/logprob_max_diff"]
