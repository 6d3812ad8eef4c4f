"""Checkpoints that survive a crash mid-write and resume training exactly.

`save_checkpoint` writes to a temporary file in the same folder, flushes it to disk and renames it over
the target (`os.replace` is atomic), so a killed process leaves the previous file intact. Files are read
back with `weights_only=True`. `rng_state`/`set_rng_state` capture the Python and torch generators so a
resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from engine.errors import UserError

LAST_CHECKPOINT = "last_checkpoint"  # a text file naming the newest checkpoint of a run


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside `path` to write; renamed over `path` when the block succeeds (`os.replace` is
    atomic), removed when it fails, so `path` is always the old file or the whole new one. A `path` that is a
    folder, or whose folder cannot be made, is a `UserError` naming the path the user gave."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (temp file + fsync + rename)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def load_weights_only(path: str | os.PathLike, kind: str = "checkpoint",
                      failure: str = "corrupt or unsafe checkpoint") -> Any:
    """`torch.load(weights_only=True)` on the CPU: nothing in the file is executed. A missing file is
    "`<path>: <kind> not found`", an unreadable one "`<path>: <failure> (<first line of the reason>)`"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {kind} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: {failure} ({first})") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only: nothing in it is executed)."""
    state = load_weights_only(path)
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    return state


def mark_last(output_dir: str | os.PathLike, checkpoint: Path) -> None:
    """Record `checkpoint` as the run's newest (atomically), for `--resume`."""
    target = Path(output_dir) / LAST_CHECKPOINT
    tmp = target.with_suffix(".tmp")
    tmp.write_text(checkpoint.name, encoding="utf-8")
    os.replace(tmp, target)


def find_last(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run directory, or None when it has none."""
    marker = Path(output_dir) / LAST_CHECKPOINT
    if not marker.is_file():
        return None
    path = Path(output_dir) / marker.read_text(encoding="utf-8").strip()
    return path if path.is_file() else None


def checkpoint_path(output_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(output_dir) / f"checkpoint_{iteration:07d}.pth"


def prune_checkpoints(output_dir: str | os.PathLike, iteration: int, keep: int) -> None:
    """After saving the checkpoint of `iteration`: keep it and the `keep - 1` before it; remove older ones, and
    later ones left by an abandoned continuation (a resume from an earlier checkpoint overwrites that future)."""
    found = sorted((int(p.stem.split("_")[1]), p) for p in Path(output_dir).glob("checkpoint_*.pth")
                   if p.stem.split("_")[1].isdigit())
    earlier = [p for it, p in found if it <= iteration]
    stale = earlier[: -max(1, keep)] + [p for it, p in found if it > iteration]
    for path in stale:
        path.unlink(missing_ok=True)


RUN_FILES = ("model_final.pth", LAST_CHECKPOINT, "metrics.jsonl", "checkpoint_*.pth")


def holds_run(output_dir: str | os.PathLike) -> bool:
    """Whether a folder holds (part of) a training run: checkpoints, metrics or a final model. A folder with
    only the `config.yaml` of a run that stopped before its first step does not count."""
    out = Path(output_dir)
    return out.is_dir() and any(next(out.glob(pattern), None) is not None for pattern in RUN_FILES)


def remove_partial_saves(output_dir: str | os.PathLike) -> list[Path]:
    """Delete what a save killed mid-write leaves: `save_checkpoint`'s `.<name>.*.tmp` and the marker's `.tmp`."""
    out = Path(output_dir)
    leftovers = [*out.glob(".*.tmp"), out / f"{LAST_CHECKPOINT}.tmp"]
    removed = [p for p in leftovers if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
