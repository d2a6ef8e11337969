"""Checkpoint storage: atomic publication, pruning, crash recovery (real SIGKILLed subprocesses),
`trainer.resume` resolution, RNG state round trips and the stop-signal flag. No Ray, no GPU."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_vlm.checkpoint.store import (
    MANIFEST,
    CheckpointError,
    CheckpointStore,
    check_complete,
    resolve_resume,
    save_json_atomic,
    save_torch_atomic,
)
from rl_vlm.driver.signals import install_stop_handler
from rl_vlm.seeds import rng_state, set_rng_state


def save(store: CheckpointStore, step: int) -> str:
    """A checkpoint shaped like the real one: driver state plus per-rank shards in a subdirectory."""
    with store.begin(step) as ck:
        save_json_atomic(os.path.join(ck.path, "driver.json"), {"step": step})
        os.makedirs(os.path.join(ck.path, "learner"))
        for rank in range(2):
            save_torch_atomic(os.path.join(ck.path, "learner", f"rank{rank}.pt"), {"w": torch.full((4,), step + rank)})
    assert ck.final_path is not None
    return ck.final_path


def step_dir(run_dir: Path, step: int) -> str:
    return str(run_dir / "checkpoints" / f"step_{step}")


def hidden(run_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(run_dir / "checkpoints") if n.startswith("."))


def pointer(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def test_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=2)
    assert store.latest() is None and store.list() == []
    path = save(store, 3)

    assert path == step_dir(tmp_path, 3) == store.latest()
    assert pointer(tmp_path) == "step_3"
    assert json.loads(Path(path, "driver.json").read_text()) == {"step": 3}
    assert torch.equal(torch.load(os.path.join(path, "learner", "rank1.pt"))["w"], torch.full((4,), 4))
    manifest = check_complete(path, deep=True)
    assert manifest["step"] == 3 and manifest["format_version"] == 1
    assert sorted(manifest["files"]) == ["driver.json", "learner/rank0.pt", "learner/rank1.pt"]
    assert manifest["files"]["driver.json"]["size"] == os.path.getsize(os.path.join(path, "driver.json"))
    assert "sha256" in manifest["files"]["driver.json"]
    assert hidden(tmp_path) == []


def test_meta_is_recorded_and_a_damaged_file_is_caught(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    with store.begin(1, meta={"config_hash": "abc"}) as ck:
        Path(ck.path, "state.bin").write_bytes(b"0123456789")
    path = step_dir(tmp_path, 1)
    assert check_complete(path)["meta"] == {"config_hash": "abc"}
    Path(path, "state.bin").write_bytes(b"0123456780")  # same size, other bytes: only the hash tells
    check_complete(path)
    with pytest.raises(CheckpointError, match="sha256"):
        check_complete(path, deep=True)


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_pruning_keeps_exactly_keep_last_newest(tmp_path: Path, keep_last: int) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=keep_last)
    for step in range(1, 7):
        save(store, step)
        expected = [step_dir(tmp_path, s) for s in range(max(1, step - keep_last + 1), step + 1)]
        assert store.list() == expected
        assert store.latest() == step_dir(tmp_path, step)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(
        ["latest"] + [f"step_{s}" for s in range(7 - keep_last, 7)])


def test_keep_last_zero_keeps_everything(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=0)
    for step in range(4):
        save(store, step)
    assert store.list() == [step_dir(tmp_path, s) for s in range(4)]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_begin_keeps_previous_checkpoint(tmp_path: Path, error: type[BaseException]) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=1)
    first = save(store, 1)
    with pytest.raises(error):
        with store.begin(2) as ck:
            Path(ck.path, "half.bin").write_bytes(b"x" * 1000)
            raise error("writer failed")
    assert store.latest() == first and store.list() == [first]
    assert pointer(tmp_path) == "step_1"
    assert hidden(tmp_path) == [] and not os.path.exists(step_dir(tmp_path, 2))
    assert Path(first, "driver.json").exists()  # keep_last=1 did not prune it: nothing newer was completed


def test_writers_must_not_write_the_manifest(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    with pytest.raises(CheckpointError, match="must not create"):
        with store.begin(1) as ck:
            Path(ck.path, MANIFEST).write_text("{}")
    assert store.latest() is None and hidden(tmp_path) == []


# A child process that starts a save of step 2 and is SIGKILLed at a chosen point.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from rl_vlm.checkpoint import store as checkpoint
    run_dir, where = sys.argv[1], sys.argv[2]
    store = checkpoint.CheckpointStore(run_dir, keep_last=1)
    def die(*args, **kwargs):
        print("dying", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "before_pointer":
        checkpoint.CheckpointStore._after_publish = die
    if where == "while_pruning":
        checkpoint.shutil.rmtree = die  # the old checkpoint was renamed to trash, not yet deleted
    with store.begin(2) as ck:
        with open(os.path.join(ck.path, "shard.bin"), "wb") as f:
            for i in range(100000 if where == "mid_write" else 4):
                f.write(b"x" * 65536)
                f.flush()
                if i == 3 and where == "mid_write":
                    print("writing", flush=True)
                time.sleep(0.01 if where == "mid_write" else 0)
""")


def run_child_until_killed(run_dir: Path, where: str) -> int:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), where], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() in ("writing", "dying"), f"child did not reach {where!r}"
        if line.strip() == "writing":
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.pid


def test_sigkill_mid_write_keeps_previous_and_next_save_cleans(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=1)
    first = save(store, 1)
    pid = run_child_until_killed(tmp_path, "mid_write")

    stale = tmp_path / "checkpoints" / f".tmp-step_2-{pid}"
    assert (stale / "shard.bin").stat().st_size >= 4 * 65536  # really killed mid-write
    assert store.latest() == first and store.list() == [first]
    assert store.resolve("auto") == first
    with pytest.raises(CheckpointError, match="trainer.resume.*not a complete checkpoint"):
        store.resolve(str(stale))

    third = save(store, 3)
    assert hidden(tmp_path) == [] and store.list() == [third]


def test_sigkill_between_rename_and_pointer_update(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=1)
    save(store, 1)
    run_child_until_killed(tmp_path, "before_pointer")

    assert pointer(tmp_path) == "step_1"  # stale: one save behind
    assert store.latest() == step_dir(tmp_path, 2)
    assert store.list() == [step_dir(tmp_path, 1), step_dir(tmp_path, 2)]  # not pruned: that comes after the pointer
    save(store, 3)
    assert pointer(tmp_path) == "step_3" and store.list() == [step_dir(tmp_path, 3)]


def test_sigkill_while_pruning(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=1)
    save(store, 1)
    run_child_until_killed(tmp_path, "while_pruning")

    assert pointer(tmp_path) == "step_2" and store.list() == [step_dir(tmp_path, 2)]
    assert [n.split("-")[0] + "-" + n.split("-")[1] for n in hidden(tmp_path)] == [".trash-step_1"]
    save(store, 3)
    assert hidden(tmp_path) == [] and store.list() == [step_dir(tmp_path, 3)]


def test_stale_or_garbage_pointer(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=3)
    first, second = save(store, 1), save(store, 2)
    shutil.rmtree(second)
    assert pointer(tmp_path) == "step_2" and store.latest() == first
    (tmp_path / "checkpoints" / "latest").write_text("../../etc\n")
    assert store.latest() == first
    os.unlink(tmp_path / "checkpoints" / "latest")
    assert store.latest() == first


def test_incomplete_or_foreign_step_dirs_are_not_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=3)
    first, second = save(store, 1), save(store, 2)
    os.makedirs(step_dir(tmp_path, 9))  # no manifest
    assert store.latest() == second
    with open(os.path.join(second, "learner", "rank0.pt"), "r+b") as f:  # truncated shard
        f.truncate(3)
    assert store.latest() == first
    shutil.copytree(first, step_dir(tmp_path, 7))  # a copy whose manifest says step 1
    assert store.latest() == first


def test_resaving_a_step_and_resuming_from_an_earlier_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=5)
    for step in (10, 20, 30):
        save(store, step)
    # The user resumes from step_10 (e.g. step 30 diverged): the first new save abandons 20 and 30.
    assert store.resolve(step_dir(tmp_path, 10)) == step_dir(tmp_path, 10)
    save(store, 15)
    assert store.list() == [step_dir(tmp_path, 10), step_dir(tmp_path, 15)]
    assert store.latest() == step_dir(tmp_path, 15) and hidden(tmp_path) == []
    # Saving the same step again replaces it.
    with store.begin(15) as ck:
        Path(ck.path, "v2").write_text("second")
    assert sorted(os.listdir(step_dir(tmp_path, 15))) == [MANIFEST, "v2"]


def test_resolve(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = CheckpointStore(str(run))
    assert store.resolve("auto") is None and store.resolve("off") is None
    assert resolve_resume("auto", str(tmp_path / "never-created")) is None
    save(store, 1)
    newest = save(store, 2)
    assert store.resolve("auto") == newest and store.resolve("off") is None
    assert store.resolve(step_dir(run, 1)) == step_dir(run, 1)
    assert store.resolve(str(run)) == newest  # a run directory means its newest checkpoint
    assert store.resolve(str(run / "checkpoints")) == newest
    # Another run's checkpoint, given relative to the working directory.
    other = CheckpointStore(str(tmp_path / "other"))
    other_ck = save(other, 5)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert store.resolve("other") == other_ck
        assert store.resolve("other/checkpoints/step_5") == other_ck
    finally:
        os.chdir(cwd)


def test_resolve_errors_name_the_setting_and_the_path(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "run"))
    missing = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=rf"trainer\.resume.*{missing}.*does not exist"):
        store.resolve(missing)
    Path(tmp_path / "file.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"trainer\.resume.*not a directory"):
        store.resolve(str(tmp_path / "file.pt"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match=r"trainer\.resume.*plain.*neither a checkpoint.*nor a run directory"):
        store.resolve(str(tmp_path / "plain"))
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"trainer\.resume.*empty_run has no complete checkpoint"):
        store.resolve(str(tmp_path / "empty_run"))
    (tmp_path / "empty_run" / "checkpoints" / "step_4").mkdir()
    with pytest.raises(CheckpointError, match=r"trainer\.resume.*step_4.*no COMPLETE manifest"):
        store.resolve(str(tmp_path / "empty_run" / "checkpoints" / "step_4"))
    with pytest.raises(CheckpointError, match=r"trainer\.resume is empty"):
        store.resolve("")


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    save_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        save_json_atomic(path, {"a": object()})
    assert json.loads(Path(path).read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def draws() -> tuple[list[float], list[float], list[float]]:
    return ([random.random() for _ in range(3)], np.random.rand(3).tolist() + [float(np.random.randn())],
            torch.rand(3).tolist() + torch.randn(2).tolist())


def test_rng_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    expected = draws()
    draws()
    set_rng_state(state)
    assert draws() == expected
    # Through a file, loadable without unpickling arbitrary objects.
    save_torch_atomic(str(tmp_path / "rng.pt"), state)
    draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_stop_handler(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop_requested = install_stop_handler()
    try:
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_requested() and stop_requested.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERM: still just the flag
        assert stop_requested.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C after a stop request: abort at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop_requested.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_stop_handler_warns_when_replaced(caplog: pytest.LogCaptureFixture) -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop_requested = install_stop_handler((signal.SIGTERM,))
    try:
        signal.signal(signal.SIGTERM, lambda *_: None)  # what ray.init() does to an earlier handler
        assert not stop_requested()
        assert "replaced" in caplog.text and "SIGTERM" in caplog.text
    finally:
        stop_requested.restore()
    assert signal.getsignal(signal.SIGTERM) == before
