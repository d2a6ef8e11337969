"""The driver: the training loop and everything that runs in the driver process around it.

``controller`` is the loop (one timed phase per arrow of the data flow); ``system`` builds what it
drives; one module per phase that is more than a call (``rollout_phase``: rollout + reward with
dynamic sampling; ``sft``: the SFT step; ``experience``: the algorithm hooks' inputs; ``evaluation``:
validation); ``metrics`` builds every step kind's metrics; ``curriculum`` installs each stage's
sampler and rewards; ``tracking`` writes them; ``signals`` turns SIGTERM into a clean stop;
``sweep`` is multirun bookkeeping.

May import every other package of rl_vlm; nothing imports the driver except the CLI.
"""
