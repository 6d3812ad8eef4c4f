"""YAML recipes on top of code defaults, with `key=value` overrides and a clear error for unknown keys.

A recipe may start from another with `_base_: other.yaml` (a path relative to the recipe), so one file per
paper experiment stays a few lines. Keys are checked against the defaults: a typo names the file and key.
Free-form sections (e.g. `model.options`) are marked open in the defaults by `open_keys`.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.errors import UserError


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise UserError(f"{path}: _base_ chain loops back to itself")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    parent = _read_yaml((path.parent / base).resolve(), (*seen, path))
    return OmegaConf.to_container(OmegaConf.merge(parent, data))


def _check_types(default: Any, value: Any, source: str, key: str = "") -> None:
    """Values must keep the type of their default (ints are accepted for floats; None is untyped)."""
    if default is None or value is None:
        return
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{source}: {key} must be a mapping, got {value!r}")
        for k, v in value.items():
            if k in default:
                _check_types(default[k], v, source, f"{key}.{k}" if key else str(k))
        return
    expected = (int, float) if type(default) is float else type(default)
    if isinstance(default, (list, tuple)):
        expected = (list, tuple)
    if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
        raise UserError(f"{source}: {key} must be {type(default).__name__} like {default!r}, got {value!r}")


Layer = tuple[str, Any]  # (where it came from, a nested mapping of values)


def nest(key: str, value: Any) -> dict[str, Any]:
    """`nest("a.b", 1)` is `{"a": {"b": 1}}`."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


RECIPE_SUFFIX = ".yaml"


def recipes_root() -> Path:
    """The shipped recipes: the package data `engine/recipes/` of an installed wheel (importlib.resources), else
    `configs/` of a checkout."""
    installed = Path(str(importlib.resources.files("engine").joinpath("recipes")))
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def list_recipes(kind: str | None = None) -> list[str]:
    """Names of the shipped recipes (`detection/coco_R101_C4`, ...), of one folder (`kind`) if given; those
    starting with `_` are bases for others."""
    root = recipes_root()
    found = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob(f"*/*{RECIPE_SUFFIX}"))
    return [n for n in found if not Path(n).name.startswith("_") and (kind is None or n.startswith(f"{kind}/"))]


def find_recipe(spec: str | os.PathLike) -> Path:
    """A recipe by path (a file that exists) or by name: `coco_R101_C4`, `detection/coco_R101_C4` or either
    with `.yaml`, among the shipped recipes, so that `--config` works from any folder after `pip install`."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec).removesuffix(RECIPE_SUFFIX)
    root = recipes_root()
    matches = [root / f"{n}{RECIPE_SUFFIX}" for n in list_recipes() if n == name or Path(n).name == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"--config {spec}: several recipes have that name: "
                        + ", ".join(m.relative_to(root).with_suffix("").as_posix() for m in matches))
    raise UserError(f"{spec}: config file not found, nor a shipped recipe of that name (--list-configs lists them)")


def config_layers(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                  flags: Mapping[str, tuple[str, Any]] | None = None) -> list[Layer]:
    """The layers a command line puts over the defaults, in order: the recipe file, then the flags
    (`{config key: (flag name, value)}`, named in errors), then the `key=value` overrides."""
    layers: list[Layer] = []
    if path is not None:
        recipe = find_recipe(path)
        layers.append((str(recipe), _read_yaml(recipe.resolve())))
    for key, (flag, value) in (flags or {}).items():
        layers.append((flag, nest(key, value)))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            layers.append((f"override {item!r}", OmegaConf.from_dotlist([f"{key}={value}"])))
        except OmegaConfBaseException as exc:
            raise UserError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
    return layers


Limits = Mapping[str, str]  # config key -> the interval its value (or each value of a list) must lie in


def _interval(spec: str) -> tuple[float, float, bool, bool, str]:
    """`"[1, inf)"` -> (1, inf, closed low, open high, "must be >= 1")."""
    low_text, high_text = (part.strip() for part in spec[1:-1].split(","))
    low, high = float(low_text), float(high_text)
    closed_low, closed_high = spec[0] == "[", spec[-1] == "]"
    if high == float("inf"):
        words = f"must be {'>=' if closed_low else '>'} {low_text}"
    else:
        words = f"must be between {low_text} and {high_text}"
    return low, high, closed_low, closed_high, words


def check_limits(cfg: DictConfig, limits: Limits, source: str) -> None:
    """Every value under `limits` lies in its interval (`"[1, inf)"`), or is one of its choices (`"{a, b}"`);
    None is "unset" and passes."""
    for key, spec in limits.items():
        value = to_plain(OmegaConf.select(cfg, key))
        if spec.startswith("{"):
            choices = [c.strip() for c in spec[1:-1].split(",")]
            if value is not None and str(value) not in choices:
                raise UserError(f"{source}: {key} must be one of {', '.join(choices)}, got {value!r}")
            continue
        low, high, closed_low, closed_high, words = _interval(spec)
        for v in value if isinstance(value, list) else [value]:
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            inside = (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)
            if not inside or v != v:
                raise UserError(f"{source}: {key} {words}, got {value!r}")


def merge_layers(defaults: Mapping[str, Any], layers: Sequence[Layer], open_keys: Iterable[str] = (),
                 limits: Limits | None = None) -> DictConfig:
    """Defaults <- each layer, checked for unknown keys, wrong types and values outside `limits` as it is
    merged, so that the error names the file, flag or override that brought the value."""
    cfg = OmegaConf.create(dict(defaults))
    OmegaConf.set_struct(cfg, True)
    for key in open_keys:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or ""
            reason = str(exc).splitlines()[0]
            if "not in struct" in reason or ("Key '" in reason and "not" in reason):
                reason = f"unknown key {key!r}"
            raise UserError(f"{source}: {reason}") from None
        _check_types(defaults, OmegaConf.to_container(cfg, resolve=True), source)
        check_limits(cfg, limits or {}, source)
    return cfg


def load_config(defaults: Mapping[str, Any], path: str | os.PathLike | None = None,
                overrides: Sequence[str] = (), open_keys: Iterable[str] = (),
                flags: Mapping[str, tuple[str, Any]] | None = None, limits: Limits | None = None) -> DictConfig:
    """Defaults <- recipe file <- flags <- `key=value` overrides, each checked for unknown keys, wrong types and
    values outside `limits`."""
    return merge_layers(defaults, config_layers(path, overrides, flags), open_keys, limits)


def _leaves(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, Mapping) and tree:
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def resume_config(defaults: Mapping[str, Any], saved: str | os.PathLike, layers: Sequence[Layer],
                  open_keys: Iterable[str] = (), may_change: Iterable[str] = (),
                  limits: Limits | None = None) -> DictConfig:
    """The configuration a resumed run continues with: the one saved in its folder (`saved`). What the command
    line gives again (`layers`) must agree with it, except keys under `may_change` (e.g. a longer
    `solver.max_iter`, another `data.workers`), which are taken from the command line."""
    open_keys = list(open_keys)
    stored = merge_layers(defaults, [(str(saved), _read_yaml(Path(saved)))], open_keys, limits)
    given = merge_layers(defaults, layers, open_keys, limits)
    changeable = tuple(may_change)
    for source, layer in layers:
        container = OmegaConf.to_container(layer) if isinstance(layer, DictConfig) else layer
        for key in _leaves(container):
            if key.startswith(changeable):
                OmegaConf.update(stored, key, OmegaConf.select(given, key), merge=False)
                continue
            before, now = OmegaConf.select(stored, key), OmegaConf.select(given, key)
            if to_plain(before) != to_plain(now):
                raise UserError(f"{source}: the run in {Path(saved).parent} has {key}={to_plain(before)!r}, "
                                f"this command gives {to_plain(now)!r}; --resume continues a run with its own "
                                "settings: drop the flag, or start a new run in another --output")
    return stored


def to_plain(value: Any) -> Any:
    """OmegaConf containers as plain lists/dicts, other values as they are."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def parse_key_values(pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` strings to a dict, values read as YAML scalars (`true`, `3`, `0.1`, `B`, `[1, 2]`)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"option {pair!r} is not of the form key=value")
        options[key] = yaml.safe_load(value)
    return options


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")


def to_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
