"""Every seed the framework derives from ``trainer.seed``, in one place.

A run is reproducible, and a resumed run is the same run, because every random draw comes from a
seed that is a pure function of (run seed, step, index). The constants are arbitrary primes, chosen
so that the derived streams do not collide for realistic step and index counts; changing one
changes every run's numbers, so they are fixed here and nowhere else. Also here: capturing and restoring the processes'
random state (Python, numpy, torch) for checkpoints.
"""

from __future__ import annotations

import logging
import random
from typing import Any

log = logging.getLogger("rl_vlm.seeds")

_STAGE = 100_003
_SOURCE = 7919
_STEP = 100_003
_ATTEMPT = 1_000_003
_ENGINE = 7919
_ENGINE_INIT = 1000
_PROMPT = 1009
_ROLLOUT_VIEW = 1000
_RESPONSE_VIEW = 1_000_000

VALIDATION = 0
"""Seed of the held-out subset and of validation sampling: the same prompts and samples in every
run, whatever ``trainer.seed``, so validation curves of different runs compare."""


def stage_sampler(run_seed: int, stage: int) -> int:
    """The sampler of curriculum stage ``stage`` (0 without a curriculum)."""
    return run_seed + _STAGE * stage


def mixture_source(sampler_seed: int, source: int) -> int:
    """The per-source sampler of a mixture (its own per-epoch order)."""
    return sampler_seed + _SOURCE * source


def rollout_request(run_seed: int, step: int, attempt: int = 0) -> int:
    """A step's generation request; dynamic sampling's round ``attempt`` gets its own (round 0 is
    the seed of a run without dynamic sampling)."""
    return run_seed * _STEP + step + _ATTEMPT * attempt


def engine(run_seed: int, engine: int) -> int:
    """vLLM's own seed of engine ``engine`` (every request also carries its own seed)."""
    return run_seed + _ENGINE_INIT * engine


def engine_share(request_seed: int, engine: int) -> int:
    """Engine ``engine``'s share of one generation request."""
    return request_seed + _ENGINE * engine


def engine_prompt(share_seed: int, prompt: int) -> int:
    """The ``prompt``-th prompt of an engine's share (vLLM's per-request seed)."""
    return share_seed * _PROMPT + prompt


def learner_rank(run_seed: int, rank: int) -> int:
    """The torch/numpy/random state of learner rank ``rank`` (dropout, if any)."""
    return run_seed + rank


def rollout_view(run_seed: int, step: int, view: int, prompt: int) -> list[int]:
    """numpy SeedSequence entropy of the transform of rollout view ``view`` for raw prompt
    ``prompt`` (the images the engines sample on)."""
    return [run_seed, step, _ROLLOUT_VIEW + view, prompt]


def prompt_view(run_seed: int, step: int, view: int, prompt: int) -> list[int]:
    """numpy SeedSequence entropy of learner view ``view`` drawn once per prompt (shared by its G
    responses)."""
    return [run_seed, step, view, prompt]


def response_view(run_seed: int, step: int, view: int, sequence: int) -> list[int]:
    """numpy SeedSequence entropy of learner view ``view`` drawn per response (``per_response``)."""
    return [run_seed, step, view, _RESPONSE_VIEW + sequence]


# ------------------------------------------------------------------ the processes' random state
def rng_state() -> dict[str, Any]:
    """The global RNG states of python ``random``, numpy and torch (CPU, and CUDA when CUDA is
    already initialized in this process; capturing never initializes it). The dict holds only
    python scalars/lists and tensors, so it loads with ``torch.load(weights_only=True)``."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured. CUDA states are restored only if present and this
    process sees as many devices as the one that saved them."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    s = state["numpy"]
    np.random.set_state({"bit_generator": s["bit_generator"], "has_gauss": s["has_gauss"], "gauss": s["gauss"],
                         "state": {"key": np.asarray(s["key"], dtype=np.uint32), "pos": s["pos"]}})
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch_cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("not restoring CUDA RNG states: saved for %d devices, %d visible", len(cuda),
                        torch.cuda.device_count())
