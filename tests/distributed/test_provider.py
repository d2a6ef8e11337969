"""SharedPools' engine key on the model: the files an engine is built from, not the path."""

from __future__ import annotations

import shutil
from pathlib import Path

from rl_vlm.distributed.provider import model_files_key


def test_random_and_warm_tiny_models_share_an_engine(tiny_model_dir: Path, warm_model_dir: Path) -> None:
    # Different weights and provenance, the same config, tokenizer and processor: a shared
    # system's engines serve both (the run's weights are loaded at acquire).
    assert (tiny_model_dir / "model.safetensors").read_bytes() != (warm_model_dir / "model.safetensors").read_bytes()
    assert model_files_key(str(tiny_model_dir)) == model_files_key(str(warm_model_dir))


def test_any_other_file_change_needs_other_engines(warm_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(warm_model_dir, copy)
    key = model_files_key(str(copy))
    (copy / "build_info.json").write_text("{}")
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert model_files_key(str(copy)) == key
    template = copy / "chat_template.jinja"
    template.write_text(template.read_text() + " ")
    assert model_files_key(str(copy)) != key
    (copy / "added.json").write_text("{}")  # a file the key does not know is not ignored
    assert len({key, model_files_key(str(copy))}) == 2
    assert model_files_key("org/hub-name") == "org/hub-name"
