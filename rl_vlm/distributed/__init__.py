"""Distributed (Ray) code: the actor pools the driver drives and what runs inside them.

``runtime`` starts Ray and places the pools; ``group`` is the generic actor group (ordered start,
fan-out calls, one failure policy) that ``pools`` (rollout and learner) use; ``sharding`` is the
pure arithmetic of who gets which sequences; ``placement`` is the GPU layout arithmetic; ``sync/``
holds every piece of weight sync; ``workers/`` are the classes that run inside the actors (a vLLM
engine, a DeepSpeed ZeRO-3 rank).

May import the pure packages (config, batch, algorithms, data); never the driver or checkpoint
packages. Ray, vLLM and DeepSpeed are imported inside functions, so importing this package is light.
"""
