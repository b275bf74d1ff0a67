"""Learning-rate schedules of ``ptycho-fast train``, aware of a time budget (docs/training.md).

* ``cosine``: per optimizer step, ``lr · (f + (1 - f)(1 + cos(pi·p))/2)`` with ``f =
  COSINE_FINAL_FRACTION`` and the progress ``p = max(steps / total_steps, seconds /
  max_seconds)``: with ``--max-time`` the anneal follows whichever budget runs out first,
  so a time-limited run still ends at the small final rate (as Lightning's ``max_time``
  stops a run, but here the schedule knows about it).
* ``plateau``: ``ReduceLROnPlateau`` (factor 0.5, patience 2) on the epoch's validation
  loss (the training loss without a validation split).
* ``constant``.

The schedule holds no clock: the caller passes the training seconds spent so far (also
across --resume, from the checkpoint).
"""

from __future__ import annotations

import math

import torch

__all__ = ["LR_SCHEDULES", "COSINE_FINAL_FRACTION", "PLATEAU_FACTOR", "PLATEAU_PATIENCE", "Schedule"]

LR_SCHEDULES = ("cosine", "plateau", "constant")
COSINE_FINAL_FRACTION = 0.01   # cosine schedule ends at lr * this
PLATEAU_FACTOR, PLATEAU_PATIENCE = 0.5, 2


class Schedule:
    """The learning rate of ``optimizer`` over a run: ``before_step(step, seconds)`` before
    every optimizer step, ``after_epoch(metric)`` after every epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float, total_steps: int,
                 max_seconds: float | None = None):
        if kind not in LR_SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(LR_SCHEDULES)}, got {kind!r}")
        self.optimizer, self.kind, self.lr = optimizer, kind, float(lr)
        self.total_steps, self.max_seconds = max(int(total_steps), 1), max_seconds
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE)
            if kind == "plateau" else None)

    def progress(self, step: int, seconds: float) -> float:
        """Fraction of the run done, in [0, 1]: steps or time, whichever is further."""
        p = step / self.total_steps
        if self.max_seconds:
            p = max(p, seconds / self.max_seconds)
        return min(max(p, 0.0), 1.0)

    def rate(self, step: int, seconds: float) -> float:
        """The cosine rate at (step, seconds) (the constant rate for the other schedules)."""
        if self.kind != "cosine":
            return self.lr
        p = self.progress(step, seconds)
        f = COSINE_FINAL_FRACTION
        return self.lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * p)))

    def before_step(self, step: int, seconds: float) -> None:
        if self.kind == "cosine":
            rate = self.rate(step, seconds)
            for group in self.optimizer.param_groups:
                group["lr"] = rate

    def after_epoch(self, metric: float) -> None:
        if self.plateau is not None:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "plateau": None if self.plateau is None else self.plateau.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        """A checkpoint's state; also a version-1 checkpoint's raw torch scheduler state (the
        cosine rate is recomputed from the step, so only a plateau state matters)."""
        if self.plateau is None or not state:
            return
        self.plateau.load_state_dict(state["plateau"] if "kind" in state else state)
