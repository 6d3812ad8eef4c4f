"""Python `logging` for every tool: plain lines on stdout and, for a run, its `log.txt`.

Everything the toolkit reports goes through the `resnet_toolkit` logger. `setup_console()` (called by the
command-line wrapper) prints its INFO lines on stdout on the main process, and routes Python warnings through
logging (`logging.captureWarnings`) as one `warning: <message>` line on stderr; `log_to_file(path)` adds a run
folder's `log.txt`, timestamped, for both. A record logged with `extra=FILE_ONLY` reaches the file but not the
console: the trainer's periodic lines, while a progress bar already shows the same on a terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOGGER_NAME = "resnet_toolkit"
FILE_ONLY = {"file_only": True}
FILE_FORMAT = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def get_logger(name: str | None = None) -> logging.Logger:
    """The toolkit's logger, or its child `resnet_toolkit.<name>`."""
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


class _Stdout(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (test harnesses swap it), never to a stale stream."""

    target = "stdout"

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self.target)

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False) and super().filter(record)


class _Stderr(_Stdout):
    target = "stderr"


class _WarningLine(logging.Filter):
    """Python warnings (`logging.captureWarnings` logs `file:line: Category: message` and the source line) as
    `warning: <message>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        match = re.match(r".*?:\d+: \w+: (.*?)\n", text, re.DOTALL)
        record.msg, record.args = f"warning: {(match[1] if match else text).strip()}", ()
        return True


WARNINGS = logging.getLogger("py.warnings")
WARNINGS.addFilter(_WarningLine())


def setup_console(rank: int | None = None) -> None:
    """INFO lines of the toolkit on stdout, on the main process only (once, however often it is called), and
    warnings as one `warning: ...` line on stderr."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    logger = get_logger()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if rank == 0 and not any(isinstance(h, _Stdout) for h in logger.handlers):
        logger.addHandler(_Stdout())
    logging.captureWarnings(True)
    WARNINGS.propagate = False
    if not any(isinstance(h, _Stderr) for h in WARNINGS.handlers):
        WARNINGS.addHandler(_Stderr())


def log_to_file(path: str | os.PathLike) -> logging.Handler:
    """Append the toolkit's log to `path` (timestamped lines) until `close_file_log(handler)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(FILE_FORMAT)
    logger = get_logger()
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    WARNINGS.addHandler(handler)
    return handler


def close_file_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        get_logger().removeHandler(handler)
        WARNINGS.removeHandler(handler)
        handler.close()


def progress_bar(iterable: Any = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """tqdm's bar with its ETA where someone watches: on the main process, on a terminal, when `enabled`.
    Elsewhere (a log file, a pipe, CI) it stays silent; long work reports plain log lines instead."""
    show = enabled and int(os.environ.get("RANK", "0")) == 0 and sys.stderr.isatty()
    return tqdm(iterable, disable=not show, dynamic_ncols=True, **options)
