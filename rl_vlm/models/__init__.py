"""Model builders: the tiny Qwen2.5-VL used on CPU, its CPU-independent random init, its supervised
warm start and the shipped warm-started build (assets/)."""
