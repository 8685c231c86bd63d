"""A hang detector for every phase of a run: steps, evaluation, saves, rollbacks and the export.

A rank stuck in a collective (a dead or frozen peer, a mismatched call) never returns. The
watchdog arms ``faulthandler``'s timer before each phase: if the phase outlives its limit, every
thread's stack is printed and the process exits non-zero, so ``torchrun --max-restarts`` (or any
supervisor) restarts the job, which then resumes from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import faulthandler
import sys

from .recipe import WatchdogSection


def _fault_file():
    """faulthandler writes to a file descriptor; a captured sys.stderr (notebooks, pytest) has none."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


class Watchdog:
    def __init__(self, cfg: WatchdogSection, log=print) -> None:
        self.cfg = cfg
        self.log = log

    def step_limit(self, median_step_seconds: float | None) -> float:
        """A step may take ``factor`` x the median step (the first ones compile: 4 x the minimum)."""
        if median_step_seconds:
            return max(self.cfg.min_seconds, self.cfg.factor * median_step_seconds)
        return 4 * self.cfg.min_seconds

    @contextlib.contextmanager
    def covering(self, seconds: float):
        """Exit the process with every stack printed if the block runs longer than ``seconds``."""
        if not self.cfg.enabled:
            yield
            return
        faulthandler.dump_traceback_later(seconds, exit=True, file=_fault_file())
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()

    def phase(self):
        """Evaluation, save, rollback, export: each gets ``phase_seconds``."""
        return self.covering(self.cfg.phase_seconds)
