"""Random initialisation that gives the same bytes on every CPU.

torch's CPU ``normal_`` picks its kernel by instruction set (a vectorised one on AVX2 builds, a
scalar one under AVX-512 dispatch), so ``torch.manual_seed(s)`` + a model constructor is not the
same model on an Intel Xeon and an AMD EPYC. numpy's ``Generator`` (PCG64 bit generator, ziggurat
normals) is integer and table arithmetic, identical on every platform for one numpy version, so
every parameter here is drawn from numpy in float64 and then cast.

The scheme mirrors ``transformers.PreTrainedModel._init_weights`` (which Qwen2.5-VL does not
override): ``normal(0, initializer_range)`` for Linear/Conv weights and Embedding tables, the
Embedding's ``padding_idx`` row zeroed, zeros for biases, ones for RMSNorm/LayerNorm weights.
``initializer_range`` is read from the config of the nearest enclosing ``PreTrainedModel`` (the
vision tower and the language model carry their own), with HF's fallbacks. Deliberate
differences: each parameter gets its own stream keyed by its name (so adding a layer does not
shift every later tensor), and a parameter of a module type the scheme does not cover raises
instead of silently keeping torch's draw. Buffers (rotary ``inv_freq``) are computed, not drawn,
and are left alone.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

import numpy as np
import torch
from torch import nn

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_NORMS = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)

_M = TypeVar("_M", bound=nn.Module)


def _std(config: object) -> float:
    """HF's choice of the init std for a config (``PreTrainedModel._init_weights``)."""
    if hasattr(config, "initializer_range"):
        return float(config.initializer_range or 0.02)
    if hasattr(config, "init_std"):
        return float(config.init_std)
    if hasattr(config, "initializer_factor"):
        return float(config.initializer_factor)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return float(getattr(text, "initializer_range", 0.02))


def _is_norm(module: nn.Module) -> bool:
    # HF's test: its norms are per-model classes (Qwen2_5_VLRMSNorm, ...), matched by name.
    name = type(module).__name__
    return isinstance(module, _NORMS) or "LayerNorm" in name or "RMSNorm" in name


def _normal(seed: int, name: str, shape: torch.Size, std: float) -> np.ndarray:
    # crc32, not hash(): Python's str hash is salted per process.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.standard_normal(tuple(shape), dtype=np.float64) * std


@torch.no_grad()
def deterministic_init_(model: _M, seed: int) -> _M:
    """Overwrite every parameter of ``model`` in place, deterministically in ``seed`` and the
    parameter names, independent of the CPU; returns ``model``."""
    from transformers import PreTrainedModel

    owners = {name: m.config for name, m in model.named_modules() if isinstance(m, PreTrainedModel)}
    if not owners:
        raise TypeError(f"{type(model).__name__} is not a transformers PreTrainedModel")
    done: set[int] = set()
    for mod_name, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        owner = max((n for n in owners if n == "" or mod_name == n or mod_name.startswith(n + ".")), key=len)
        std = _std(owners[owner])
        for p_name, param in params:
            if id(param) in done:  # tied weights: the first owner's draw stands
                continue
            done.add(id(param))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias":
                value = np.zeros(tuple(param.shape))
            elif p_name == "weight" and _is_norm(module):
                value = np.ones(tuple(param.shape))
            elif p_name == "weight" and isinstance(module, (*_WEIGHTED, nn.Embedding)):
                value = _normal(seed, full, param.shape, std)
                pad = getattr(module, "padding_idx", None) if isinstance(module, nn.Embedding) else None
                if pad is not None:
                    value[pad] = 0.0
            else:
                raise TypeError(f"no deterministic init for parameter {full} of {type(module).__name__}")
            # float64 -> dtype is one IEEE rounding: the same on every CPU.
            param.copy_(torch.from_numpy(value).to(param.dtype))
    return model
