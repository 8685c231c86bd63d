"""Loss-spike and non-finite guard (the idea of LLM Foundry's loss-spike callback and OLMo-core's
skip-step optimizer): a step whose loss is not finite or far above the recent median is skipped
before the optimizer touches the weights; after ``patience`` bad steps in a row the loop rolls back
to the last checkpoint (or stops).
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from .recipe import SpikeSection


class SpikeGuard:
    def __init__(self, cfg: SpikeSection) -> None:
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.bad_in_a_row = 0

    def verdict(self, loss: float, grad_norm: float) -> str | None:
        """None if the step may be applied, else the reason to skip it."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss {loss} / grad norm {grad_norm}"
        if self.cfg.enabled and len(self.history) >= self.cfg.min_history:
            median = statistics.median(self.history)
            if loss > self.cfg.factor * median:
                return f"loss spike {loss:.4f} > {self.cfg.factor} x median {median:.4f} of the last {len(self.history)}"
        return None

    def record(self, loss: float, skipped: bool) -> bool:
        """Update the history; True when the run should roll back (too many bad steps in a row)."""
        if skipped:
            self.bad_in_a_row += 1
            return self.bad_in_a_row >= self.cfg.patience
        self.bad_in_a_row = 0
        self.history.append(loss)
        return False

    def state_dict(self) -> dict:
        return {"history": list(self.history), "bad_in_a_row": self.bad_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.bad_in_a_row = state["bad_in_a_row"]
