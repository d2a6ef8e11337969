"""Worker processes: rollout engines (vLLM) and learner ranks (DeepSpeed). Leaves of the import tree."""
