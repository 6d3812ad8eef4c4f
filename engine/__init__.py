"""Shared runtime used by every task: configs, checkpoints, distributed processes, the training loop, metrics,
logging, precision, export, errors and the command-line wrapper (one module each)."""

from engine.errors import UserError

__all__ = ["UserError"]
