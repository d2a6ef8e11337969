"""The classes that run inside the Ray actors: one vLLM engine (``rollout``) and one DeepSpeed
ZeRO-3 rank (``learner``). Plain classes; :mod:`rl_vlm.distributed.pools` wraps them in actors.
``logprobs`` is the learner's torch-only math (chunked log-probs, entropies and view KLs from
hidden states), tested without Ray or DeepSpeed."""
