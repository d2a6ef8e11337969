"""Prompt templates: how a row's ``problem`` becomes the user turn of a chat.

The chat template itself comes from the tokenizer (Qwen's ``<|im_start|>`` format for both the
tiny model and real Qwen2.5-VL checkpoints), so the same code serves every model.
"""

from __future__ import annotations

from typing import Any

TEMPLATES: dict[str, str] = {
    # R1-V / GRPO-CARE style reasoning format; the `format` reward checks exactly these tags.
    "think_answer": (
        "{problem} Think step by step inside <think></think> tags, "
        "then give the final answer inside <answer></answer> tags."
    ),
    # Curr-ReFT stage 1 (judgement) and stage 2 (multiple choice) suffixes (algorithms.md §6).
    "think_answer_yes_no": (
        "{problem} Think step by step inside <think></think> tags, then give the final answer inside "
        "<answer></answer> tags. Ensure your final answer is exactly 'yes' or 'no'."
    ),
    "think_answer_choice": (
        "{problem} Think step by step inside <think></think> tags, then give the final answer inside "
        "<answer></answer> tags. Ensure your final answer is exactly one of the provided option letters."
    ),
    # The question alone (e.g. for a model warm-started without the format instruction).
    "plain": "{problem}",
}


def user_text(problem: str, template: str) -> str:
    """The user-turn text for ``problem`` under the named template."""
    if template not in TEMPLATES:
        raise KeyError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(problem=problem)


def build_messages(problem: str, num_images: int, template: str) -> list[dict[str, Any]]:
    """Chat messages with the images first, then the question (as Qwen2.5-VL examples do)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": user_text(problem, template)})
    return [{"role": "user", "content": content}]


def render_prompt(tokenizer_or_processor: Any, problem: str, num_images: int, template: str) -> str:
    """Chat-templated prompt text ending with the assistant turn opener.

    Each image becomes ``<|vision_start|><|image_pad|><|vision_end|>``; vLLM and the HF processor
    both expand the single ``<|image_pad|>`` to the image's visual-token count.
    """
    messages = build_messages(problem, num_images, template)
    return tokenizer_or_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sft_target(answer: str) -> str:
    """The response a warm-started policy is taught to produce (format only; reasoning is trivial)."""
    return f"<think>I look at the image and find the answer.</think><answer>{answer}</answer>"
