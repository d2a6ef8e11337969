"""RowDataset (bad rows skipped and reported with file and row number, Parquet, prompt length)
and PromptSampler (seeded epochs, replacements for bad rows, exact resume)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rl_vlm.data.dataset import RowDataset, SkippedRow
from rl_vlm.data.prompt import render_prompt
from rl_vlm.data.sampling import PromptSampler

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
# A Qwen-style chat template (system turn, images before the text, assistant opener).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """A real (tiny) byte-level BPE tokenizer with Qwen's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["what color is the shape?", "Think step by step inside tags", "the answer"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)


def make_dataset(files: list[Path] | Path, tokenizer: Any, max_prompt_length: int = 4096,
                 min_pixels: int = 3136) -> RowDataset:
    files = files if isinstance(files, list) else [files]
    return RowDataset([str(f) for f in files], tokenizer, "think_answer", min_pixels=min_pixels,
                      max_pixels=12845056, max_prompt_length=max_prompt_length)


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Objects are JSON-encoded; strings are written verbatim (to plant broken lines)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name, color in [("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))]:
        (tmp_path / "img" / f"{name}.png").write_bytes(png(color))
    (tmp_path / "img" / "corrupt.png").write_bytes(b"not a png")
    return tmp_path


def good_rows(n: int) -> list[dict[str, Any]]:
    return [{"images": [f"img/{'abc'[i % 3]}.png"], "problem": f"question {i}?", "answer": f"a{i}"} for i in range(n)]


# ----------------------------------------------------------------------------- RowDataset
def test_bad_rows_are_skipped_and_reported(data_dir: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(data_dir / "mixed.jsonl", [
        {"images": ["img/a.png"], "problem": "what color is the shape?", "answer": "red", "task": "color"},  # 1 ok
        {"images": ["img/a.png"], "problem": "what shape?"},                                           # 2 no answer
        {"images": ["img/b.png"], "problem": "  ", "answer": "x"},                                     # 3 empty problem
        {"image": "img/b.png", "problem": "how many?", "answer": 3, "uid": "my-uid", "extra": [1, 2]},  # 4 ok
        {"images": ["img/missing.png"], "problem": "what?", "answer": "y"},                            # 5 lazy: no file
        '{"images": ["img/a.png"], "problem": "broken", ',                                             # 6 bad JSON
        "",                                                                                             # 7 blank
        {"images": ["img/c.png"], "problem": 17, "answer": "z"},                                       # 8 problem not str
        {"images": ["img/corrupt.png"], "problem": "what?", "answer": "y"},                            # 9 lazy: corrupt
        {"images": ["img/c.png", "img/a.png"], "problem": "two images?", "answer": "yes"},             # 10 ok
    ])
    with caplog.at_level(logging.WARNING, logger="rl_vlm.data"):
        ds = make_dataset(path, tokenizer)
    assert len(ds) == 5  # lines 1, 4, 5, 9, 10 are structurally valid
    assert [(s.row, s.numbering) for s in ds.skipped] == [(2, "line"), (3, "line"), (6, "line"), (8, "line")]
    assert all(s.file == str(path) for s in ds.skipped)
    reasons = [s.reason for s in ds.skipped]
    assert "'answer' is missing" in reasons[0] and "'problem' is empty" in reasons[1]
    assert "invalid JSON" in reasons[2] and "'problem' must be a string, got int" in reasons[3]
    logged = [r.getMessage() for r in caplog.records if r.name == "rl_vlm.data" and r.levelno == logging.WARNING]
    assert len(logged) == 4
    assert all(str(path) in m for m in logged)
    assert f"{path} line 6 (1-based line number): invalid JSON" in logged[2]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rl_vlm.data"):
        prompts = [ds.get(i) for i in range(len(ds))]
        assert ds.get(2) is None  # asking again does not report again
    assert [p is None for p in prompts] == [False, False, True, True, False]
    assert [s.row for s in ds.skipped[4:]] == [5, 9] and ds.num_bad == 2
    assert "FileNotFoundError" in ds.skipped[4].reason and "img/missing.png" in ds.skipped[4].reason
    assert "img/corrupt.png" in ds.skipped[5].reason
    logged = [r.getMessage() for r in caplog.records if r.name == "rl_vlm.data"]
    assert len(logged) == 2 and "line 5 (1-based line number)" in logged[0] and "line 9" in logged[1]

    first, fourth, tenth = prompts[0], prompts[1], prompts[4]
    assert first.uid == "mixed.jsonl:1" and fourth.uid == "my-uid" and tenth.uid == "mixed.jsonl:10"
    assert first.row == {"problem": "what color is the shape?", "answer": "red", "task": "color"}
    assert fourth.row == {"problem": "how many?", "answer": "3", "uid": "my-uid", "extra": [1, 2]}
    assert first.prompt_text == render_prompt(tokenizer, "what color is the shape?", 1, "think_answer")
    assert tenth.prompt_text.count("<|image_pad|>") == 2
    assert [im.size for im in tenth.images] == [(56, 56), (56, 56)]  # 64x64 -> smart_resize -> 56x56
    assert tenth.images[0].mode == "RGB" and tenth.images[0].getpixel((28, 28)) == (0, 0, 255)


@pytest.mark.parametrize("row, reason", [
    ({"problem": "q", "answer": "a"}, "'images' is missing"),
    ({"images": [], "problem": "q", "answer": "a"}, "'images' is empty"),
    ({"images": [{"url": "x"}], "problem": "q", "answer": "a"}, "image 0"),
    ({"images": ["img/a.png", 5], "problem": "q", "answer": "a"}, "image 1"),
    ({"images": ["img/a.png"], "answer": "a"}, "'problem' is missing"),
    ({"images": ["img/a.png"], "problem": "q", "answer": ""}, "'answer' is empty"),
    ({"images": ["img/a.png"], "problem": "q", "answer": None}, "'answer' is missing"),
    ({"images": ["img/a.png"], "problem": "q", "answer": True}, "'answer' must be a string or a number"),
    ({"images": ["img/a.png"], "problem": "q", "answer": ["a"]}, "'answer' must be a string or a number"),
    (["not", "an", "object"], "row must be an object"),
])
def test_structural_checks(data_dir: Path, tokenizer: Any, row: Any, reason: str) -> None:
    path = write_jsonl(data_dir / "d.jsonl", [good_rows(1)[0], row])
    ds = make_dataset(path, tokenizer)
    assert len(ds) == 1 and len(ds.skipped) == 1
    assert ds.skipped[0].row == 2 and reason in ds.skipped[0].reason


def test_parquet_with_image_bytes(data_dir: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_struct = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({
        # HF datasets' layout: a list of {bytes, path} structs per row.
        "images": pa.array([[{"bytes": png((255, 0, 0)), "path": None}],
                            [{"bytes": png((0, 255, 0)), "path": "x.png"}],
                            [{"bytes": png((0, 0, 255)), "path": None}],
                            [{"bytes": None, "path": "img/b.png"}]], type=image_struct),
        "problem": ["red?", "", "blue?", "by path?"],
        "answer": ["yes", "no", "yes", "yes"],
        "task": ["yes_no"] * 4,
    })
    path = data_dir / "rows.parquet"
    pq.write_table(table, path)
    with caplog.at_level(logging.WARNING, logger="rl_vlm.data"):
        ds = make_dataset(path, tokenizer)
    assert len(ds) == 3
    assert ds.skipped == [SkippedRow(str(path), 1, "'problem' is empty", "index")]
    assert "row 1 (0-based row index)" in caplog.records[0].getMessage()
    prompts = [ds.get(i) for i in range(3)]
    assert [p.uid for p in prompts] == ["rows.parquet:0", "rows.parquet:2", "rows.parquet:3"]
    assert prompts[1].images[0].getpixel((0, 0)) == (0, 0, 255)
    assert prompts[2].images[0].getpixel((0, 0)) == (0, 255, 0)  # relative path resolved next to the file
    assert prompts[0].row == {"problem": "red?", "answer": "yes", "task": "yes_no"}


def test_raw_binary_image_column_and_several_files(data_dir: Path, tokenizer: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [png((9, 9, 9))], "problem": ["q"], "answer": [1.5]}), data_dir / "p.parquet")
    jsonl = write_jsonl(data_dir / "j.jsonl", good_rows(2))
    ds = make_dataset([jsonl, data_dir / "p.parquet"], tokenizer)
    prompts = [ds.get(i) for i in range(len(ds))]
    assert [p.uid for p in prompts] == ["j.jsonl:1", "j.jsonl:2", "p.parquet:0"]
    assert prompts[2].row["answer"] == "1.5"


def test_max_prompt_length(data_dir: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(data_dir / "d.jsonl", [
        {"images": ["img/a.png"], "problem": "short?", "answer": "a"},
        {"images": ["img/a.png", "img/b.png"], "problem": "short?", "answer": "a"},
    ])
    text1 = render_prompt(tokenizer, "short?", 1, "think_answer")
    # The single <|image_pad|> becomes (56/28) * (56/28) = 4 visual tokens.
    length1 = len(tokenizer(text1).input_ids) - 1 + 4
    text2 = render_prompt(tokenizer, "short?", 2, "think_answer")
    length2 = len(tokenizer(text2).input_ids) - 2 + 8
    assert length2 > length1
    ds = make_dataset(path, tokenizer, max_prompt_length=length1)
    with caplog.at_level(logging.WARNING, logger="rl_vlm.data"):
        assert ds.get(0) is not None  # exactly at the limit is fine
        assert ds.get(1) is None
    assert ds.skipped[0].row == 2 and f"prompt is {length2} tokens" in ds.skipped[0].reason
    # The dataset also logs an INFO summary when a handler lets it through (Hydra set-up in an
    # earlier test): look at the warnings only.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "d.jsonl line 2" in warnings[0]
    # Larger images cost more tokens: min_pixels 12544 -> 112x112 -> 16 tokens per image.
    ds = make_dataset(path, tokenizer, max_prompt_length=length1, min_pixels=12544)
    assert ds.get(0) is None and str(length1 + 12) in ds.skipped[0].reason


def test_prompt_length_matches_real_processor(tiny_model_dir: Path, data_dir: Path) -> None:
    """The counted length equals what the Qwen2.5-VL processor produces after expanding images."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    path = write_jsonl(data_dir / "d.jsonl", [
        {"images": ["img/a.png", "img/b.png"], "problem": "what color is the shape?", "answer": "red"}])
    probe = make_dataset(path, processor, max_prompt_length=10_000, min_pixels=12544)
    prompt = probe.get(0)
    expanded = processor(text=[prompt.prompt_text], images=prompt.images, return_tensors="pt")["input_ids"][0]
    n = len(expanded)
    assert n == len(processor.tokenizer(prompt.prompt_text).input_ids) - 2 + 2 * 16
    assert make_dataset(path, processor, max_prompt_length=n, min_pixels=12544).get(0) is not None
    assert make_dataset(path, processor, max_prompt_length=n - 1, min_pixels=12544).get(0) is None


def test_file_errors(data_dir: Path, tokenizer: Any) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        make_dataset(data_dir / "nope.jsonl", tokenizer)
    (data_dir / "rows.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match=r"rows\.csv.*unsupported extension"):
        make_dataset(data_dir / "rows.csv", tokenizer)
    bad = write_jsonl(data_dir / "bad.jsonl", ['{"problem": ', {"problem": "q"}])
    with pytest.raises(ValueError, match=r"no valid rows in .*bad\.jsonl"):
        make_dataset(bad, tokenizer)
    (data_dir / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"broken\.parquet"):
        make_dataset(data_dir / "broken.parquet", tokenizer)
    good = write_jsonl(data_dir / "good.jsonl", good_rows(1))
    with pytest.raises(KeyError, match="no_such_template"):
        RowDataset([str(good)], tokenizer, "no_such_template", 3136, 12845056, 512)


# ----------------------------------------------------------------------------- PromptSampler
def uids(batch: list[Any]) -> list[str]:
    return [p.uid for p in batch]


@pytest.fixture()
def ten_rows(data_dir: Path, tokenizer: Any) -> RowDataset:
    rows = good_rows(10)
    rows[3]["images"] = ["img/missing.png"]  # found bad when first drawn
    rows[7]["images"] = ["img/corrupt.png"]
    return make_dataset(write_jsonl(data_dir / "ten.jsonl", rows), tokenizer)


def test_sampler_epochs_and_replacements(ten_rows: RowDataset, data_dir: Path, tokenizer: Any) -> None:
    sampler = PromptSampler(ten_rows, batch_size=3, seed=5)
    batches = [uids(sampler.next_batch()) for _ in range(6)]  # 18 valid prompts: > two epochs of 8
    assert all(len(b) == 3 for b in batches)
    flat = [u for b in batches for u in b]
    valid = {f"ten.jsonl:{n}" for n in range(1, 11)} - {"ten.jsonl:4", "ten.jsonl:8"}
    assert set(flat[:8]) == valid and set(flat[8:16]) == valid  # each epoch visits every valid row once
    assert flat[:8] != flat[8:16]  # epochs are reshuffled (seed + epoch)
    # Two full epochs draw both bad rows twice (epoch 2 may draw one of them again); each counts once.
    assert sampler.epoch == 2 and sampler.consumed >= 18 + 4 and sampler.num_skipped == 2
    assert sampler.bad_rows == ten_rows.bad_rows and [r.row for r in sampler.bad_rows] in ([4, 8], [8, 4])
    assert ten_rows.num_bad == 2 and len(ten_rows.skipped) == 2

    again = PromptSampler(make_dataset(data_dir / "ten.jsonl", tokenizer), batch_size=3, seed=5)
    assert [uids(again.next_batch()) for _ in range(6)] == batches  # same seed -> same batches
    other = PromptSampler(make_dataset(data_dir / "ten.jsonl", tokenizer), batch_size=3, seed=6)
    assert [uids(other.next_batch()) for _ in range(6)] != batches

    ordered = PromptSampler(ten_rows, batch_size=4, seed=5, shuffle=False)
    assert uids(ordered.next_batch()) == ["ten.jsonl:1", "ten.jsonl:2", "ten.jsonl:3", "ten.jsonl:5"]
    assert uids(ordered.next_batch()) == ["ten.jsonl:6", "ten.jsonl:7", "ten.jsonl:9", "ten.jsonl:10"]
    assert uids(ordered.next_batch())[0] == "ten.jsonl:1" and ordered.epoch == 1


def test_sampler_state_dict_round_trip(ten_rows: RowDataset, data_dir: Path, tokenizer: Any) -> None:
    sampler = PromptSampler(ten_rows, batch_size=3, seed=11)
    for _ in range(2):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
    expected = [uids(sampler.next_batch()) for _ in range(5)]  # crosses into later epochs

    resumed = PromptSampler(make_dataset(data_dir / "ten.jsonl", tokenizer), batch_size=3, seed=11)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.consumed, resumed.num_skipped) == (state["epoch"], state["consumed"],
                                                                      state["num_skipped"])
    assert [uids(resumed.next_batch()) for _ in range(5)] == expected
    assert resumed.state_dict() == sampler.state_dict()

    with pytest.raises(ValueError, match="seed"):
        PromptSampler(ten_rows, batch_size=3, seed=12).load_state_dict(state)
    smaller = make_dataset(write_jsonl(data_dir / "five.jsonl", good_rows(5)), tokenizer)
    with pytest.raises(ValueError, match="num_rows"):
        PromptSampler(smaller, batch_size=3, seed=11).load_state_dict(state)


def test_sampler_first_and_small_datasets(ten_rows: RowDataset, data_dir: Path, tokenizer: Any) -> None:
    sampler = PromptSampler(ten_rows, batch_size=2, seed=0)
    assert uids(sampler.first(4)) == ["ten.jsonl:1", "ten.jsonl:2", "ten.jsonl:3", "ten.jsonl:5"]
    assert len(sampler.first(100)) == 8 and sampler.first(0) == []
    assert sampler.consumed == 0  # first() does not move the sampler

    # A batch larger than the dataset wraps into the next epoch.
    tiny = PromptSampler(make_dataset(write_jsonl(data_dir / "two.jsonl", good_rows(2)), tokenizer), 5, seed=0)
    batch = uids(tiny.next_batch())
    assert len(batch) == 5 and set(batch) == {"two.jsonl:1", "two.jsonl:2"} and tiny.epoch == 2

    rows = good_rows(2)
    for r in rows:
        r["images"] = ["img/missing.png"]
    all_bad = PromptSampler(make_dataset(write_jsonl(data_dir / "bad.jsonl", rows), tokenizer), 1, seed=0)
    with pytest.raises(RuntimeError, match="every row"):
        all_bad.next_batch()
    with pytest.raises(ValueError):
        PromptSampler(ten_rows, batch_size=0, seed=0)
