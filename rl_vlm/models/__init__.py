"""Model builders: the tiny Qwen2.5-VL used on CPU, the real-shape one (Qwen2.5-VL's vocabulary and
vision geometry around narrow towers), their CPU-independent random init, the tiny model's
supervised warm start and the shipped warm-started build (assets/)."""
