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
        message = str(exc) if isinstance(exc, UserError) else _describe_os_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
