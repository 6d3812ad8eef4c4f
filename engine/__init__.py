"""Shared runtime used by every task: errors, command-line entry, and (later) training plumbing."""

from engine.errors import UserError

__all__ = ["UserError"]
