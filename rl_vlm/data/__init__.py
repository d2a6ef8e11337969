"""Datasets of ``{images, problem, answer}`` rows, their samplers, image resizing and prompt templates."""
