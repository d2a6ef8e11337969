"""Model builders: the tiny Qwen2.5-VL used on CPU and its supervised warm start."""
