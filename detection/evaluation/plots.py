"""Precision/recall curves per class (PNG) and the per-class AP table (markdown)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine.metrics import pyplot, save_figure


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], per_class: Mapping[str, float | None],
                   out_png: str | os.PathLike, title: str = "") -> Path:
    """One small panel per class: precision against recall, AP in the panel title."""
    names = list(curves)
    cols = min(5, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = pyplot().subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        recall, precision = curves[name]
        ax.set_visible(True)
        ax.plot(np.concatenate([[0], recall]), np.concatenate([[1], precision]), lw=1.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: AP {per_class[name]:.1f}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("recall", fontsize=9)
    fig.supylabel("precision", fontsize=9)
    return save_figure(fig, out_png, dpi=110)


def per_class_table(per_class: Mapping[str, float | None], mean: float | None, header: str = "AP (%)") -> str:
    """Markdown: one row per class (n/a where it has no ground truth), the mean last."""
    def shown(value: float | None) -> str:
        return "n/a (no ground truth)" if value is None else f"{value:.2f}"

    lines = [f"| class | {header} |", "|---|---|"]
    lines += [f"| {name} | {shown(ap)} |" for name, ap in per_class.items()]
    lines.append(f"| **mean** | **{shown(mean)}** |")
    return "\n".join(lines)
