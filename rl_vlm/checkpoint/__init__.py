"""Checkpoints: the atomic store (``store``), what a checkpoint holds (``state``: save/restore of
the running system), the resume decision and the keys fixed on resume (``resume``), and export to
a Hugging Face directory (``export``).

May import the pure packages and :mod:`rl_vlm.distributed.interfaces`; never the driver.
"""
