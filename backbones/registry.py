"""One registry of every network: name -> builder plus the metadata the tools and tests need.

The timm pattern without its machinery: `register_model(...)` fills a dict, `build_model(name, ...)`
looks it up and checks the options against the builder's signature, so a typo is an error that lists
what is valid instead of a silently ignored keyword.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from engine.errors import UserError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one network.

    `fixed` names builder keywords that the name already decides (e.g. `residual=False` for plain
    nets), so they are not user options. `paper` holds the figures the paper reports for it
    (`macs`, multiply-adds, `params`) and `paper_options` the options that match the paper's
    network when those figures are compared.
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str
    input_size: int
    num_classes: int
    fixed: tuple[str, ...] = ()
    paper: Mapping[str, float] = field(default_factory=dict)
    paper_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """User-settable keyword options of the builder and their defaults."""
        params = inspect.signature(self.builder).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in self.fixed
        }


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, builder: Callable[..., nn.Module], **info: Any) -> None:
    """Add `name` to the registry; `info` are the remaining `ModelInfo` fields."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelInfo(name=name, builder=builder, **info)


def list_models(family: str | None = None) -> list[str]:
    """Names of all registered networks (optionally of one family), in registration order."""
    return [n for n, info in _REGISTRY.items() if family is None or info.family == family]


def model_info(name: str) -> ModelInfo:
    """Registry entry of `name`; an unknown name is a `UserError` listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}") from None


def build_model(name: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """Build the classifier `name` with `num_classes` outputs (default: its dataset's) and `options`."""
    info = model_info(name)
    valid = info.options
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise UserError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options (defaults): {listed}")
    try:
        return info.builder(info.num_classes if num_classes is None else num_classes, **options)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None
