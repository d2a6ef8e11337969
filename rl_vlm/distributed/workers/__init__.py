"""The classes that run inside the Ray actors: one vLLM engine (``rollout``) and one DeepSpeed
ZeRO-3 rank (``learner``). Plain classes; :mod:`rl_vlm.distributed.pools` wraps them in actors."""
