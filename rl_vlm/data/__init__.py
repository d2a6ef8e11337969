"""Datasets of ``{images, problem, answer}`` rows, image resizing and prompt templates."""
