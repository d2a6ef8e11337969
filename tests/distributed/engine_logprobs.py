"""Test helper: a live engine's teacher-forced log-probs of a given response, to compare the
engine with the learner's forward on the same weights. Only tests need this (the training loop
never scores a fixed response with vLLM), so it lives here rather than on ``RolloutEngine``."""

from __future__ import annotations

from typing import Any

from rl_vlm.batch import Prompt


def prompt_logprobs(engine: Any, prompt: Prompt, response_ids: list[int]) -> list[float]:
    """The log-prob ``engine`` (a :class:`rl_vlm.distributed.workers.rollout.RolloutEngine`)
    gives each of ``response_ids`` after ``prompt`` (teacher-forced)."""
    from vllm import SamplingParams, TokensPrompt

    # Token prompts carry one <|image_pad|> per image; the engine expands it itself.
    unexpanded = engine.llm.get_tokenizer()(prompt.prompt_text, add_special_tokens=False).input_ids
    req = TokensPrompt(prompt_token_ids=unexpanded + list(response_ids),
                       multi_modal_data={"image": list(prompt.images)})
    out = engine.llm.generate([req], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    n_prompt = len(out.prompt_token_ids) - len(response_ids)
    if list(out.prompt_token_ids[n_prompt:]) != list(response_ids):
        raise RuntimeError("the engine changed the response tokens of a teacher-forced prompt")
    tail = out.prompt_logprobs[n_prompt:]
    return [float(d[t].logprob) for d, t in zip(tail, response_ids)]
