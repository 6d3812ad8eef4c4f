"""Entry-point wrapper for `tools/*.py`: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from engine.errors import UserError

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)`; turn `UserError` (and file/permission errors) into `error: ...` on stderr.

    With `--debug` among the arguments the exception propagates with its full traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(args) or 0)
    except (UserError, OSError) as exc:
        if "--debug" in args:
            raise
        message = _one_line(exc) if isinstance(exc, UserError) else _describe_os_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(exc: UserError) -> str:
    """The message itself, also when a DataLoader worker re-raised it wrapped in its traceback."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(line.strip() for line in lines)


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
