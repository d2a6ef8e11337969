"""Stopping on a signal: SIGTERM/SIGINT set a flag the loop reads once per step, so it can
finish the step, save and exit."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("rl_vlm.driver")


class StopRequested:
    """A flag set by SIGTERM/SIGINT, made by :func:`install_stop_handler`; call it to read it.

    The training loop checks it once per step, after the step's update, and then saves and leaves::

        stop_requested = install_stop_handler()
        try:
            for step in range(start, total_steps):
                run_step(step)
                if step % save_every == 0 or stop_requested():
                    save(step)
                if stop_requested():
                    log.info("stopping after step %d (%s)", step, stop_requested.signal_name)
                    break
        finally:
            stop_requested.restore()

    A second SIGINT (Ctrl-C again) raises KeyboardInterrupt at once; repeated SIGTERMs only keep
    the flag set (a scheduler's SIGKILL after its grace period ends the job; the atomic save
    means the previous checkpoint is then still intact).

    Install it *after* ``ray.init()``: ``ray.init`` sets its own SIGTERM handler (exit at once)
    and would replace this one; reading the flag warns once if that happened. Ray's worker
    processes start with SIGINT blocked, so Ctrl-C reaches only the driver and the actors stay
    alive to write the checkpoint.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        """Name of the first signal received (``"SIGTERM"``/``"SIGINT"``), None before any."""
        self._previous: dict[int, Any] = {}
        self._warned = False

    def __call__(self) -> bool:
        if not self._warned:
            replaced = [signal.Signals(s).name for s in self._previous if signal.getsignal(s) != self._handle]
            if replaced:
                self._warned = True
                log.warning("the stop handler for %s was replaced by another one (install it after ray.init())",
                            ", ".join(replaced))
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            log.warning("%s received: finishing the current step, saving a checkpoint, then exiting "
                        "(Ctrl-C again to abort without saving)", self.signal_name)

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def install_stop_handler(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> StopRequested:
    """Install handlers for ``signals`` that set (and return) a :class:`StopRequested` flag instead
    of killing the process. Must be called from the main thread (a Python rule for signals)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_stop_handler() must be called from the main thread")
    flag = StopRequested()
    for signum in signals:
        flag._previous[signum] = signal.signal(signum, flag._handle)
    return flag
