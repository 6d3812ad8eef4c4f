"""Learning-rate schedules by iteration, with the paper's warm-ups and plateau drops, resumable exactly.

One class covers the recipes: step drops at fixed iterations (CIFAR: 32k and 48k), drops when the
validation error stops improving (ImageNet: "divided by 10 when the error plateaus"), a constant or
linear warm-up for a number of iterations, and the ResNet-110 warm-up that holds a low rate until the
training error falls below a threshold.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any


class LRSchedule:
    def __init__(self, base_lr: float, *, steps: Sequence[int] = (), gamma: float = 0.1,
                 warmup_iters: int = 0, warmup_factor: float = 0.1, warmup_method: str = "constant",
                 warmup_until_error: float | None = None, error_window: int = 50,
                 plateau_patience: int = 0, plateau_threshold: float = 0.1) -> None:
        if warmup_method not in ("constant", "linear"):
            raise ValueError(f"warmup_method must be constant or linear, got {warmup_method!r}")
        self.base_lr = base_lr
        self.steps = sorted(steps)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        self.warmup_until_error = warmup_until_error
        self.plateau_patience = plateau_patience
        self.plateau_threshold = plateau_threshold
        self._errors: deque[float] = deque(maxlen=error_window)
        self.error_warmup_done = warmup_until_error is None
        self.plateau_drops = 0
        self._best: float | None = None
        self._bad_evals = 0

    def lr_at(self, iteration: int) -> float:
        drops = sum(iteration >= s for s in self.steps) + self.plateau_drops
        lr = self.base_lr * self.gamma**drops
        if not self.error_warmup_done:
            return lr * self.warmup_factor
        if iteration < self.warmup_iters:
            if self.warmup_method == "constant":
                return lr * self.warmup_factor
            alpha = iteration / self.warmup_iters
            return lr * (self.warmup_factor * (1 - alpha) + alpha)
        return lr

    def observe_train_error(self, error: float) -> None:
        """Feed a training batch's error (in %); ends the error-based warm-up once the window's mean is low."""
        if self.error_warmup_done:
            return
        self._errors.append(error)
        if len(self._errors) == self._errors.maxlen and sum(self._errors) / len(self._errors) < self.warmup_until_error:
            self.error_warmup_done = True

    def observe_val_error(self, error: float) -> bool:
        """Feed a validation error (in %); returns True when it triggers a plateau drop: `plateau_patience`
        measurements in a row without an improvement of at least `plateau_threshold` points on the best."""
        if not self.plateau_patience:
            return False
        if self._best is None or error <= self._best - self.plateau_threshold + 1e-9:  # an improvement of >= threshold
            self._best, self._bad_evals = error, 0
            return False
        self._bad_evals += 1
        if self._bad_evals >= self.plateau_patience:
            self.plateau_drops += 1
            self._bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"errors": list(self._errors), "error_warmup_done": self.error_warmup_done,
                "plateau_drops": self.plateau_drops, "best": self._best, "bad_evals": self._bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._errors.clear()
        self._errors.extend(state["errors"])
        self.error_warmup_done = state["error_warmup_done"]
        self.plateau_drops = state["plateau_drops"]
        self._best = state["best"]
        self._bad_evals = state["bad_evals"]
