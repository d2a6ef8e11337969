"""Weight sync of a LoRA run (``model.lora.rank > 0``): only the adapter moves.

Learner rank 0 gathers the adapter's ZeRO-3 partitions (every rank takes part in the gather)
and puts the tensors in Ray's object store once; every engine reads them, writes a PEFT adapter
directory of its own (``adapter_model.safetensors`` + ``adapter_config.json``) and loads it as a
new vLLM LoRA adapter, replacing the previous one. The base weights never move, so a sync costs
the adapter's bytes, whatever the transport ``cluster.weight_sync`` names for full weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

    from rl_vlm.distributed.interfaces import ObjectRef


ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class AdapterWeights:
    """A published adapter: its tensors in the object store and its PEFT config."""

    tensors: ObjectRef
    """``dict[str, torch.Tensor]``: PEFT's saved names (``...q_proj.lora_A.weight``)."""
    config_json: str
    """``adapter_config.json`` as PEFT writes it (rank, alpha, target modules, base model)."""
    num_bytes: int
    """Bytes of the adapter tensors (what one sync moves to each engine)."""


def write_adapter(directory: str, tensors: dict[str, torch.Tensor], config_json: str) -> str:
    """Write a PEFT adapter directory that vLLM's ``LoRARequest`` loads by path; returns it."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    # The object store hands out read-only views; safetensors needs contiguous tensors.
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(directory, ADAPTER_WEIGHTS_FILE))
    with open(os.path.join(directory, ADAPTER_CONFIG_FILE), "w") as f:
        f.write(config_json)
    return directory


def adapter_config_json(peft_config: PeftConfig) -> str:
    """``adapter_config.json`` of a ``peft.LoraConfig``, exactly as its ``save_pretrained`` writes it."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        peft_config.save_pretrained(d)
        with open(os.path.join(d, ADAPTER_CONFIG_FILE)) as f:
            return f.read()
