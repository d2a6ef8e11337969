"""The chunked log-prob path (rl_vlm/distributed/workers/logprobs.py) equals the full-logits one
(every position's ``[n, T, V]`` logits, then ``token_logprobs`` / ``shifted_entropy`` / a
full-vocabulary KL) to fp32 rounding, in values and in gradients, on random tensors and on the
tiny Qwen2.5-VL through the learner's own methods (no DeepSpeed: a plain module stands in for
the engine), for chunk sizes that do and do not divide the number of response positions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rl_vlm.algorithms.papo_config import PapoConfig
from rl_vlm.algorithms.vppo_config import VppoConfig
from rl_vlm.batch import SequenceBatch
from rl_vlm.config import AlgorithmConfig, LearnerConfig, ModelConfig
from rl_vlm.distributed.sharding import RankShard
from rl_vlm.distributed.workers.learner import Learner
from rl_vlm.distributed.workers.logprobs import (
    EntropyMode,
    final_hidden_states,
    head_kl,
    head_logprobs,
    lm_head,
    sequence_logprobs,
    sequence_view_kl,
    shifted_entropy,
    token_logprobs,
)

ATOL = 1e-5


# ------------------------------------------------------------------------------ random tensors
def _case(seed: int = 0, n: int = 3, T: int = 13, H: int = 8, V: int = 50):
    """Hidden states, a head, ids and a response mask with ragged prompts, responses and padding
    (row 2 has no response at all)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, T, H, generator=g, dtype=torch.float64).float().requires_grad_(True)
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
    ids = torch.randint(0, V, (n, T), generator=g)
    mask = torch.zeros(n, T)
    mask[0, 4:11] = 1.0   # prompt 4, response 7, padding 2
    mask[1, 2:13] = 1.0   # prompt 2, response 11 to the end
    adv = torch.randn(n, T, generator=g)
    return hidden, head, ids, mask, adv


def _reference(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden) / temperature
    return token_logprobs(logits, ids), shifted_entropy(logits)


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("chunk", [1, 4, 6, 18, 1000])  # 18 response positions: 4 and 1000 do not divide them
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_entropy_and_gradients_equal_the_full_logits(chunk: int, temperature: float) -> None:
    hidden, head, ids, mask, adv = _case()
    params = [hidden, head.weight]
    ref_lp, ref_ent = _reference(hidden, head, ids, temperature)
    ref_loss = (adv * ref_lp * mask).sum() + 0.3 * (ref_ent * mask).sum()
    lp, ent = sequence_logprobs(hidden, ids, mask, head, temperature, chunk, "grad")
    assert ent is not None and lp.shape == ent.shape == ids.shape and lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref_lp * mask, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, ref_ent * mask, atol=ATOL, rtol=0)
    loss = (adv * lp * mask).sum() + 0.3 * (ent * mask).sum()
    for got, want in zip(_grads(loss, params), _grads(ref_loss, params), strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("positions", [0, 5, 18, 40])
def test_a_fixed_number_of_head_calls_whatever_the_positions(positions: int) -> None:
    """ZeRO-3 traces every LM-head module call and assumes all ranks make the same calls: with
    ``num_chunks`` the head runs exactly that often (forward and checkpoint recompute alike) for
    any number of response positions, and the values and gradients are unchanged."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(positions, 8, generator=g).requires_grad_(True)
    targets = torch.randint(0, 50, (positions,), generator=g)
    head = torch.nn.Linear(8, 50, bias=False)
    calls: list[int] = []
    head.register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))
    tok, _ = head_logprobs(hidden, targets, head, 1.0, chunk_size=6, num_chunks=3)
    forward_calls = len(calls)
    tok.sum().backward()
    assert forward_calls == 3 and len(calls) == 6  # + one checkpoint recompute per chunk, empty or not
    assert sum(calls[:3]) == positions
    want = torch.log_softmax(head(hidden.detach()), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(tok.detach(), want)


def test_entropy_value_has_no_graph_and_leaves_the_gradient_to_the_logprobs() -> None:
    hidden, head, ids, mask, adv = _case(1)
    params = [hidden, head.weight]
    ref_lp, ref_ent = _reference(hidden, head, ids, 1.0)
    lp, ent = sequence_logprobs(hidden, ids, mask, head, 1.0, 4, "value")
    assert ent is not None and not ent.requires_grad and lp.requires_grad
    torch.testing.assert_close(ent, ref_ent.detach() * mask, atol=ATOL, rtol=0)
    for got, want in zip(_grads((adv * lp * mask).sum(), params), _grads((adv * ref_lp * mask).sum(), params),
                         strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    lp_only, none = sequence_logprobs(hidden, ids, mask, head, 1.0, 4, "none")
    assert none is None
    torch.testing.assert_close(lp_only, lp, atol=0, rtol=0)


def test_no_grad_pass_and_empty_responses() -> None:
    hidden, head, ids, mask, _ = _case(2)
    with torch.no_grad():
        ref_lp, ref_ent = _reference(hidden, head, ids, 0.5)
        lp, ent = sequence_logprobs(hidden, ids, mask, head, 0.5, 5, "value")
        assert ent is not None and not lp.requires_grad
        torch.testing.assert_close(lp, ref_lp * mask, atol=ATOL, rtol=0)
        torch.testing.assert_close(ent, ref_ent * mask, atol=ATOL, rtol=0)
        empty, empty_ent = sequence_logprobs(hidden, ids, torch.zeros_like(mask), head, 1.0, 5, "value")
    assert empty_ent is not None and torch.count_nonzero(empty) == 0 and empty.shape == ids.shape
    with pytest.raises(ValueError, match="logprob_chunk_size"):
        head_logprobs(hidden[0], ids[0], head, 1.0, 0)


def test_nothing_vocabulary_wide_is_saved_for_backward() -> None:
    """Outside the checkpointed chunks the graph keeps no [*, V] tensor: only hidden-width ones."""
    n, T, H, V = 2, 40, 16, 4096
    hidden = torch.randn(n, T, H, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=False)
    ids, mask = torch.randint(0, V, (n, T)), torch.zeros(n, T)
    mask[:, 10:] = 1.0
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = sequence_logprobs(hidden, ids, mask, head, 1.0, 8, "grad")
    assert ent is not None and max(saved) < V
    (lp.sum() + ent.sum()).backward()
    assert hidden.grad is not None and head.weight.grad is not None


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_view_kl_equals_the_full_distributions(chunk: int) -> None:
    hidden_p, head, ids, mask, _ = _case(3)
    hidden_q = (hidden_p + 0.5 * torch.randn_like(hidden_p)).detach()
    with torch.no_grad():
        lp = torch.log_softmax(head(hidden_p)[:, :-1] / 0.8, -1)
        lq = torch.log_softmax(head(hidden_q)[:, :-1] / 0.8, -1)
        ref_kl = torch.nn.functional.pad((lp.exp() * (lp - lq)).sum(-1), (1, 0))
        ref_rev = torch.nn.functional.pad((lq.exp() * (lq - lp)).sum(-1), (1, 0))
        kl, kl_rev = sequence_view_kl(hidden_p, hidden_q, mask, head, 0.8, chunk)
    torch.testing.assert_close(kl, ref_kl * mask, atol=ATOL, rtol=0)
    torch.testing.assert_close(kl_rev, ref_rev * mask, atol=ATOL, rtol=0)
    assert float(kl[mask > 0].min()) > 0
    flat_kl, _ = head_kl(hidden_p[0, :5].detach(), hidden_p[0, :5].detach(), head, 1.0, 2)
    torch.testing.assert_close(flat_kl, torch.zeros(5), atol=ATOL, rtol=0)


@pytest.mark.parametrize("entropy", ["value", "grad"])
def test_masked_vocabulary_entries_count_zero_in_the_entropy(entropy: EntropyMode) -> None:
    """A head with −inf logits (masked entries) on some rows: entropies as entropy_from_logits
    gives them (0·(−inf) counted as 0), finite gradients equal to the reference's."""
    hidden, head, ids, mask, adv = _case(5)
    ids = ids.clamp_max(39)  # targets stay among the unmasked entries

    def masked(h: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        return torch.cat([logits[..., :40], torch.full_like(logits[..., 40:], float("-inf"))], -1)

    ref_lp, ref_ent = _reference(hidden, masked, ids, 1.0)
    lp, ent = sequence_logprobs(hidden, ids, mask, masked, 1.0, 4, entropy)
    assert ent is not None and bool(torch.isfinite(ent).all())
    torch.testing.assert_close(ent, ref_ent.detach() * mask, atol=ATOL, rtol=0)
    torch.testing.assert_close(lp, ref_lp * mask, atol=ATOL, rtol=0)
    if entropy == "grad":
        params = [hidden, head.weight]
        got = _grads((adv * lp * mask).sum() + (ent * mask).sum(), params)
        want = _grads((adv * ref_lp * mask).sum() + (ref_ent * mask).sum(), params)
        for g, w in zip(got, want, strict=True):
            assert bool(torch.isfinite(g).all())
            torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_bf16_head_is_upcast_before_the_softmax() -> None:
    hidden, head, ids, mask, _ = _case(4)
    head_bf16 = head.to(torch.bfloat16)
    with torch.no_grad():
        h = hidden.to(torch.bfloat16)
        logits = head_bf16(h).float() / 0.9
        lp, ent = sequence_logprobs(h, ids, mask, head_bf16, 0.9, 4, "value")
    assert lp.dtype == torch.float32 and ent is not None and ent.dtype == torch.float32
    torch.testing.assert_close(lp, token_logprobs(logits, ids) * mask, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------ the tiny model
class FakeEngine(torch.nn.Module):
    """What the learner reads of a DeepSpeed engine, around a plain model (world size 1, no
    ZeRO): forward, ``.module``, backward (plain autograd: gradients stay on the parameters),
    a no-op step."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, **kwargs: Any) -> Any:
        return self.module(**kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        pass

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        pass

    def get_global_grad_norm(self) -> None:
        return None

    def get_lr(self) -> list[float]:
        return [0.0]


class FullLogitsLearner(Learner):
    """The learner's forward before chunking: every position's logits (the equality reference)."""

    def _forward(self, module: torch.nn.Module, b: SequenceBatch, entropy: EntropyMode
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = _full_logits(self, module, b)
        ent = None if entropy == "none" else shifted_entropy(logits)
        return token_logprobs(logits, b.input_ids), ent if entropy != "value" or ent is None else ent.detach()


def _inputs(learner: Learner, b: SequenceBatch) -> dict[str, Any]:
    return dict(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values,
                image_grid_thw=b.image_grid_thw, mm_token_type_ids=(b.input_ids == learner.image_token_id).int(),
                use_cache=False)


def _full_logits(learner: Learner, module: torch.nn.Module, b: SequenceBatch) -> torch.Tensor:
    return module(**_inputs(learner, b)).logits / learner._shard().temperature


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from rl_vlm.data.prompt import render_prompt

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(2)]
    prompts = []
    for k, question in enumerate(["what color is the shape?", "what shape is it?"]):
        text = render_prompt(proc, question, 1, "think_answer")
        prompts.append(proc(text=[text], images=[images[k]], return_tensors="pt")["input_ids"][0].tolist())
    return model, proc, images, prompts


def _learner(tiny, algorithm: AlgorithmConfig, chunk: int, cls: type[Learner] = Learner,
             temperature: float = 0.7, pack: bool = True,
             micro_batches: list[list[int]] | None = None) -> Learner:
    """A learner rank without DeepSpeed (no ``init``): the tiny model in a FakeEngine, and a shard of
    4 sequences (2 prompts x 2 responses of ragged lengths, so the two micro-batches of 2 differ in
    width), each view's images drawn with the algorithm's own transforms."""
    model, proc, images, prompts = tiny
    learner = cls(0, 1, ModelConfig(), LearnerConfig(micro_batch_size=2, logprob_chunk_size=chunk,
                                                     packing="on" if pack else "off"), algorithm, "cpu", 0)
    learner.engine, learner.processor = FakeEngine(model), proc
    learner.ref_engine = learner.ema_engine = None
    learner.image_token_id = model.config.image_token_id
    learner.gas = 1
    g = torch.Generator().manual_seed(1)
    responses = [torch.randint(3, 200, (length,), generator=g).tolist() for length in (5, 9, 3, 7)]
    all_images: list[list[Any]] = [[img] for img in images]
    view_index: dict[str, list[int]] = {}
    for k, view in enumerate(learner.algorithm.views()):
        view_index[view.name] = []
        for i in range(4):
            all_images.append([view.transform(images[i // 2], np.random.default_rng(100 * k + i))])
            view_index[view.name].append(len(all_images) - 1)
    tokens = float(sum(len(r) for r in responses))
    learner.set_batch(RankShard(images=all_images, image_index=[0, 0, 1, 1], view_index=view_index,
                                prompt_ids=[prompts[i // 2] for i in range(4)], response_ids=responses,
                                mini_batches=[[0, 1, 2, 3]], micro_batches=[micro_batches or [[0, 1], [2, 3]]],
                                num_tokens=[tokens], num_seqs=[4.0],
                                max_response_len=9, temperature=temperature, step=1, total_steps=10))
    return learner


def _close_lists(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4, 512])
def test_tiny_model_logprobs_entropy_and_parameter_gradients(tiny, chunk: int) -> None:
    learner = _learner(tiny, AlgorithmConfig(), chunk)
    model = learner.engine.module
    params = [p for p in model.parameters() if p.requires_grad]
    for micro in ([0, 1], [2, 3]):
        b = learner._collate(micro)
        adv = torch.randn(b.input_ids.shape, generator=torch.Generator().manual_seed(micro[0]))
        mask = b.response_mask
        logits = _full_logits(learner, learner.engine, b)
        ref_lp, ref_ent = token_logprobs(logits, b.input_ids), shifted_entropy(logits)
        lp, ent = learner._forward(learner.engine, b, "grad")
        assert ent is not None
        torch.testing.assert_close(lp, ref_lp * mask, atol=ATOL, rtol=0)
        torch.testing.assert_close(ent, ref_ent * mask, atol=ATOL, rtol=0)
        loss = (adv * lp * mask).sum() + 0.1 * (ent * mask).sum()
        ref_loss = (adv * ref_lp * mask).sum() + 0.1 * (ref_ent * mask).sum()
        got, want = _grads(loss, params), _grads(ref_loss, params)
        assert sum(float(w.abs().sum()) for w in want) > 0
        for (name, _), g, w in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], got, want,
                                   strict=True):
            torch.testing.assert_close(g, w, atol=ATOL, rtol=0, msg=name)


def test_tiny_model_hidden_states_feed_the_head_as_the_model_does(tiny) -> None:
    learner = _learner(tiny, AlgorithmConfig(), 8, temperature=1.0)
    b = learner._collate([0, 1])
    with torch.no_grad():
        hidden = final_hidden_states(learner.engine, **_inputs(learner, b))
        logits = learner.engine(**_inputs(learner, b)).logits
        torch.testing.assert_close(lm_head(learner.engine)(hidden), logits, atol=ATOL, rtol=0)
    assert lm_head(learner.engine) is learner.engine.module.lm_head


@pytest.mark.parametrize("chunk", [3, 256])
def test_tiny_model_compute_logprobs(tiny, chunk: int) -> None:
    new, old = _learner(tiny, AlgorithmConfig(), chunk), _learner(tiny, AlgorithmConfig(), chunk, FullLogitsLearner)
    _close_lists(new.compute_logprobs(), old.compute_logprobs())


@pytest.mark.parametrize("algorithm", [
    AlgorithmConfig(name="papo", papo=PapoConfig(recompute_with_grad=True)),
    AlgorithmConfig(name="vppo", vppo=VppoConfig(dependency="full_kl")),
], ids=["papo_masked_image", "vppo_full_kl"])
def test_tiny_model_views_equal_the_full_logits(tiny, algorithm: AlgorithmConfig) -> None:
    learner = _learner(tiny, algorithm, 5)
    views = learner.compute_views()
    (view,) = learner.algorithm.views()
    s = learner._shard()
    for micro in ([0, 1], [2, 3]):
        with torch.no_grad():
            b_view = learner._collate(micro, view.name)
            logits_v = _full_logits(learner, learner.engine, b_view)
            ref = token_logprobs(logits_v, b_view.input_ids)
            lp = torch.log_softmax(_full_logits(learner, learner.engine, learner._collate(micro))[:, :-1], -1)
            lq = torch.log_softmax(logits_v[:, :-1], -1)
            kl = torch.nn.functional.pad((lp.exp() * (lp - lq)).sum(-1), (1, 0))
            kl_rev = torch.nn.functional.pad((lq.exp() * (lq - lp)).sum(-1), (1, 0))
        for row, i in enumerate(micro):
            p, r = len(s.prompt_ids[i]), len(s.response_ids[i])
            torch.testing.assert_close(views[view.name]["old_logprobs"][i], ref[row, p: p + r], atol=ATOL, rtol=0)
            if view.full_kl:
                torch.testing.assert_close(views[view.name]["kl"][i], kl[row, p: p + r], atol=ATOL, rtol=0)
                torch.testing.assert_close(views[view.name]["kl_rev"][i], kl_rev[row, p: p + r], atol=ATOL, rtol=0)
    assert ("kl" in views[view.name]) == view.full_kl
    if view.full_kl:  # the view does change the distributions
        assert max(float(x.max()) for x in views[view.name]["kl"]) > 1e-6


@pytest.mark.parametrize("algorithm", [
    AlgorithmConfig(entropy_coef=0.01),
    AlgorithmConfig(name="papo", papo=PapoConfig(recompute_with_grad=True)),
    AlgorithmConfig(name="vppo", vppo=VppoConfig(dependency="full_kl")),
], ids=["grpo_entropy_bonus", "papo_grad_view", "vppo_full_kl"])
def test_tiny_model_update_equals_the_full_logits_update(tiny, algorithm: AlgorithmConfig) -> None:
    """The whole learner update (views, loss, backward) gives the same metrics and parameter
    gradients as the same update with every position's logits."""
    _same_update(_update(_learner(tiny, algorithm, 3)), _update(_learner(tiny, algorithm, 3, FullLogitsLearner)))


def _update(learner: Learner) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model = learner.engine.module
    model.zero_grad(set_to_none=True)
    old = learner.compute_logprobs()
    learner.compute_views()
    g = torch.Generator().manual_seed(7)
    adv = [torch.randn(len(x), generator=g) for x in old]
    metrics = learner.update(adv, [x - 0.05 * torch.rand(len(x), generator=g) for x in old], None)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return metrics, grads


def _same_update(a: tuple[dict[str, float], dict[str, torch.Tensor]],
                 b: tuple[dict[str, float], dict[str, torch.Tensor]]) -> None:
    (m1, g1), (m2, g2) = a, b
    assert m1.keys() == m2.keys() and g1.keys() == g2.keys() and g1
    for k in m1:
        assert m1[k] == pytest.approx(m2[k], abs=ATOL, nan_ok=True), k
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=ATOL, rtol=0, msg=k)


@pytest.mark.parametrize("algorithm", [
    AlgorithmConfig(entropy_coef=0.01),
    AlgorithmConfig(name="papo", papo=PapoConfig(recompute_with_grad=True)),
], ids=["grpo_entropy_bonus", "papo_grad_view"])
def test_packed_and_padded_forwards_give_the_same_update(tiny, algorithm: AlgorithmConfig) -> None:
    """No padding (one packed row, per-sequence mrope, images encoded once) against right-padded rows
    with every copy of an image encoded: the same log-probs, views, metrics and gradients."""
    packed, padded = _learner(tiny, algorithm, 4), _learner(tiny, algorithm, 4, pack=False)
    _close_lists(packed.compute_logprobs(), padded.compute_logprobs())
    _same_update(_update(packed), _update(padded))


def test_uneven_micro_batches_give_the_same_update(tiny) -> None:
    """What a token budget does to a mini-batch (micro-batches of 1 and 3 sequences instead of 2 and
    2) changes neither the metrics nor the gradient: the denominators are the mini-batch's."""
    algorithm = AlgorithmConfig(entropy_coef=0.01)
    even, uneven = _learner(tiny, algorithm, 4), _learner(tiny, algorithm, 4, micro_batches=[[1], [0, 2, 3]])
    _same_update(_update(even), _update(uneven))


def test_the_vision_tower_encodes_each_image_once(tiny) -> None:
    """Sequences 0 and 1 answer the same prompt: their micro-batch sends one image to the tower."""
    learner = _learner(tiny, AlgorithmConfig(), 4)
    patches: list[int] = []
    embed = learner.engine.module.model.visual.patch_embed
    handle = embed.register_forward_pre_hook(lambda _m, args: patches.append(int(args[0].shape[0])))
    try:
        with torch.no_grad():
            learner._hidden(learner.engine, learner._collate([0, 1]))
            learner._hidden(learner.engine, learner._collate([0, 2]))
    finally:
        handle.remove()
    # One tower call each; the shared image's call embedded one image's patches, the other two images'.
    assert len(patches) == 2 and patches[1] == 2 * patches[0] > 0
