"""Never lose a run, on the real stack (Ray + vLLM + DeepSpeed ZeRO-3, tiny model):

- a run killed with SIGKILL in the middle of a checkpoint save, then relaunched with the same
  config, resumes from the previous complete checkpoint and ends bit-identical (per-step
  metrics and final weights) to an uninterrupted run;
- ``rl-vlm export`` of a checkpoint gives a HF directory equal to the learner's weights that
  transformers and vLLM load, with matching log-probs;
- a rollout engine killed mid-run is restarted and re-synced; a learner rank killed mid-run
  makes the driver restart from the newest checkpoint with new ranks beside the running engines
  (SharedPools keeps them); no step is lost or logged twice.

Only the killed run is its own process (``rl-vlm train``: SIGKILL must take the driver too).
The uninterrupted reference, the resumed run and the fault run go through ``train`` on the
suite's shared running system: a re-pointed system gives the fresh run bit for bit
(tests/e2e/test_train_e2e.py), and a system start per run would triple this file's time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rl_vlm.checkpoint.store import CheckpointStore, is_complete
from rl_vlm.compose import compose
from rl_vlm.distributed.provider import SharedPools
from rl_vlm.driver.controller import train
from rl_vlm.driver.tracking import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 2  # the kill-and-resume runs: a checkpoint every step, killed during the last one
# Timings and the clock differ between runs by nature; everything else must be identical.
VOLATILE = ("time/", "perf/")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from rl_vlm.data.easy_vqa import convert_easy_vqa

    train, test = convert_easy_vqa(tmp_path_factory.mktemp("easy_vqa"), max_train=300, max_test=40)
    return train.parent / "train_color.jsonl", test.parent / "test_color.jsonl"


def _overrides(model: Path, data: tuple[Path, Path], run_dir: Path) -> list[str]:
    return [f"model.path={model}", f"data.train_files=[{data[0]}]", f"data.val_files=[{data[1]}]",
            "data.rollout_batch_size=2", "data.val_size=4", "rollout.n=4", "rollout.max_new_tokens=16",
            "learner.num_ranks=2", "learner.mini_batch_size=1", "learner.micro_batch_size=2",
            "learner.lr=1e-3", f"trainer.total_steps={STEPS}", "trainer.val_every=1", "trainer.save_every=1",
            "trainer.keep_last=3", "trainer.save_final_model=true", "trainer.progress_bar=false",
            f"trainer.output_dir={run_dir}"]


def _launch(overrides: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from rl_vlm.cli import main; raise SystemExit(main())", "train", *overrides]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(VOLATILE)}


@pytest.fixture(scope="module")
def reference_run(warm_model_dir: Path, data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
                  shared_pools: SharedPools) -> Path:
    """An uninterrupted 2-step run (checkpoints at steps 1 and 2, final HF weights)."""
    ref_dir = tmp_path_factory.mktemp("uninterrupted")
    train(compose(_overrides(warm_model_dir, data, ref_dir)), pools=shared_pools)
    return ref_dir


def test_kill_during_save_then_resume_is_the_same_run(warm_model_dir: Path, data: tuple[Path, Path],
                                                       reference_run: Path, tmp_path: Path, shared_pools: SharedPools,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ref_dir, run_dir = reference_run, tmp_path / "killed"

    # Each save sleeps inside the temporary directory; kill the whole driver process group
    # (SIGKILL: no handler runs) while step 2's checkpoint is being written.
    proc = _launch(_overrides(warm_model_dir, data, run_dir), env={"RL_VLM_FAULT_SAVE_SLEEP_S": "3"})
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + 600
    while not (ckpts.is_dir() and any(p.name.startswith(".tmp-step_2") for p in ckpts.iterdir())):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.time() < deadline, "step 2's save never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = CheckpointStore(str(run_dir))
    assert store.latest() == str(ckpts / "step_1")
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()] == [0, 1, 2]

    train(compose(_overrides(warm_model_dir, data, run_dir)), pools=shared_pools)
    out = capsys.readouterr().out
    assert "resumed from" in out and "step_1 at step 1" in out, out[-3000:]
    assert not any(p.name.startswith(".tmp") for p in ckpts.iterdir()), "stale temp dir left behind"
    assert [Path(p).name for p in store.list()] == ["step_1", "step_2"]
    assert all(is_complete(p, deep=True) for p in store.list())

    ref = {r["step"]: _stable(r) for r in read_metrics(str(ref_dir))}
    got = read_metrics(str(run_dir))
    assert [r["step"] for r in got] == [0, 1, 2], "every step exactly once"
    for r in got:
        assert _stable(r) == ref[r["step"]], f"step {r['step']} differs after resume"
    a, b = _weights(ref_dir / "final"), _weights(run_dir / "final")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "final weights differ after resume"


def test_export_matches_learner_in_transformers_and_vllm(data: tuple[Path, Path], reference_run: Path,
                                                         tmp_path: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from rl_vlm.config import RolloutConfig
    from rl_vlm.data.dataset import RowDataset
    from rl_vlm.data.sampling import PromptSampler
    from rl_vlm.distributed.workers.learner import token_logprobs
    from rl_vlm.distributed.workers.rollout import RolloutEngine
    from tests.distributed.engine_logprobs import prompt_logprobs

    run_dir = reference_run
    out = tmp_path / "exported"
    # The final checkpoint (step 2) holds the same weights the learners wrote to final/.
    res = subprocess.run([sys.executable, "-c", "from rl_vlm.cli import main; raise SystemExit(main())",
                          "export", str(run_dir / "checkpoints" / "step_2"), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    learner, exported = _weights(run_dir / "final"), _weights(out)
    assert learner.keys() == exported.keys()
    assert all(torch.equal(learner[k], exported[k]) for k in learner), "export differs from the learner's weights"

    proc = AutoProcessor.from_pretrained(out)
    prompt = PromptSampler(RowDataset([str(data[1])], proc, "think_answer", 3136, 12845056, 512), 1, 0,
                           False).first(1)[0]
    engine = RolloutEngine(str(out), RolloutConfig(), seed=0, device="cpu")
    response = engine.generate([prompt], 1, 1.0, 1.0, 12, seed=1)[0].response_ids
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    enc = proc(text=[prompt.prompt_text], images=prompt.images, return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.tensor([response])], dim=1)
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"],
                    image_grid_thw=enc["image_grid_thw"],
                    mm_token_type_ids=(ids == hf.config.image_token_id).int()).logits
    ours = token_logprobs(logits, ids)[0, -len(response):]
    theirs = torch.tensor(prompt_logprobs(engine, prompt, response))
    assert (ours - theirs).abs().max().item() < 1e-3


def test_dead_rollout_engine_and_dead_learner_lose_no_step(warm_model_dir: Path, data: tuple[Path, Path],
                                                           tmp_path: Path, shared_pools: SharedPools) -> None:
    run_dir = tmp_path / "faults"
    # One batch sampled ahead (trainer.max_staleness=1): the engine dies with step 3's requests in
    # flight, and the learner's death restarts the run from step 2 with step 3's batch pending.
    cfg = compose([*_overrides(warm_model_dir, data, run_dir), "trainer.total_steps=4", "trainer.save_every=2",
                   "trainer.val_every=0", "trainer.max_staleness=1"])
    events: list[str] = []
    before_learner_death: dict[str, list[int]] = {}

    def metrics_steps() -> list[int]:
        path = run_dir / "metrics.jsonl"
        return [json.loads(line)["step"] for line in path.open()] if path.exists() else []

    def inject() -> None:
        deadline = time.time() + 900
        while 1 not in metrics_steps() and time.time() < deadline:
            time.sleep(0.2)
        # The run's own actors (the shared system it was given), never another process.
        os.kill(shared_pools.actor_pids()["rollout"][0], signal.SIGKILL)
        events.append("rollout")
        while 3 not in metrics_steps() and time.time() < deadline:
            time.sleep(0.2)
        before_learner_death.update(shared_pools.actor_pids())  # the engine is the restarted one
        os.kill(before_learner_death["learner"][0], signal.SIGKILL)
        events.append("learner")

    t = threading.Thread(target=inject, daemon=True)
    t.start()
    train(cfg, pools=shared_pools)
    t.join(timeout=5)
    assert events == ["rollout", "learner"]
    # The restart replaced the ranks only: the same engine process, new learner processes.
    after = shared_pools.actor_pids()
    assert after["rollout"] == before_learner_death["rollout"] and shared_pools.learner_restarts >= 1
    assert not set(after["learner"]) & set(before_learner_death["learner"])
    assert [r["step"] for r in read_metrics(str(run_dir))] == [1, 2, 3, 4], "every step exactly once"
    trained = [json.loads(line) for line in (run_dir / "prompts.jsonl").open()]
    assert [r["step"] for r in trained] == [1, 2, 3, 4]
    uids = [u for r in trained for u in r["uids"]]
    assert len(uids) == len(set(uids)) == 4 * 2, "every prompt trained exactly once"
    assert [r["weight_version"] for r in trained] == [0, 0, 1, 2]
    store = CheckpointStore(str(run_dir))
    assert [Path(p).name for p in store.list()] == ["step_2", "step_4"]
    assert all(is_complete(p, deep=True) for p in store.list())
    assert (run_dir / "final").is_dir()
