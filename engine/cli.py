"""What the command-line tools share: the entry-point wrapper (user errors become one line on stderr and exit
code 2) and the configuration of a training run from its flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from engine.config import config_layers, list_recipes, merge_layers, resume_config
from engine.distributed import cleanup
from engine.errors import UserError
from engine.logs import setup_console

EXIT_USER_ERROR = 2


class ToolParser(argparse.ArgumentParser):
    """argparse for the tools: a bad flag is a `UserError` (one line, exit 2, as every other bad input) rather
    than argparse's usage dump; `--help` shows the description once, then the examples as written."""

    def __init__(self, doc: str, **kwargs: Any) -> None:
        first, _, rest = doc.strip().partition("\n")
        super().__init__(description=first, epilog=rest.strip("\n") or None,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def add_recipe_arguments(parser: argparse.ArgumentParser, kind: str, example: str) -> None:
    """`--config` (a YAML file, or the name of a recipe shipped with the toolkit) and `--list-configs`."""
    parser.add_argument("--config", help=f"recipe: a YAML file, or the name of a shipped one (e.g. {example}; "
                        "see --list-configs)")

    class ListRecipes(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            print("\n".join(list_recipes(kind)))
            parser.exit()

    parser.add_argument("--list-configs", nargs=0, action=ListRecipes, help=f"list the shipped {kind} recipes")


def _number(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    words = {(int, 1, False): "a positive integer", (int, 0, False): "an integer >= 0",
             (float, 0, True): "a number > 0", (float, 0, False): "a number >= 0"}[(kind, low, strict)]

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}") from None
        if value < low or (strict and value == low) or (kind is float and value != value):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}")
        return value

    parse.__name__ = words
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


positive_int = _number(int, 1, False)
non_negative_int = _number(int, 0, False)
positive_float = _number(float, 0, True)
non_negative_float = _number(float, 0, False)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)`; turn `UserError` (and file/permission errors) into `error: ...` on stderr.

    With `--debug` among the arguments the exception propagates with its full traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    setup_console()
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
    finally:
        cleanup()  # leave the process group (torchrun) before the interpreter tears its threads down


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


def run_config(defaults: Mapping[str, Any], args: argparse.Namespace, flag_keys: Mapping[str, str],
               open_keys: Iterable[str] = (), may_change: Iterable[str] = (),
               limits: Mapping[str, str] | None = None) -> DictConfig:
    """A training run's configuration: defaults <- `--config` recipe <- flags (`flag_keys` maps an argparse
    dest to its config key; flags left at None are not given) <- `key=value` overrides. With `--resume` into
    a folder that holds a run, that run's saved `config.yaml` instead, which what is given again must agree
    with (except keys under `may_change`)."""
    flags = {key: ("--" + dest.replace("_", "-"), getattr(args, dest)) for dest, key in flag_keys.items()
             if getattr(args, dest) is not None}
    layers = config_layers(args.config, args.overrides, flags)
    saved = Path(args.output) / "config.yaml"
    if args.resume and saved.is_file():
        return resume_config(defaults, saved, layers, open_keys, may_change, limits)
    return merge_layers(defaults, layers, open_keys, limits)
