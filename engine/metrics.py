"""Metrics to JSONL and TensorBoard, and the training-curve plots (the paper's Fig. 4 / Fig. 6 style)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends `{"iter", "split", ...}` records to `<dir>/metrics.jsonl` and mirrors them to TensorBoard.

    Disabled writers (non-zero ranks) do nothing, so callers need no rank checks.
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def write(self, iteration: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"iter": iteration, "split": split, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", float(value), iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a run, one per (split, iter): after a resume the re-logged record wins."""
    path = Path(run_dir) / METRICS_FILE
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                latest[(record["split"], record["iter"])] = record
    return sorted(latest.values(), key=lambda r: (r["split"], r["iter"]))


def series(records: Sequence[Mapping[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["iter"], r[key]) for r in records if r["split"] == split and key in r]
    return [p[0] for p in points], [p[1] for p in points]


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` as a PNG (creating the folder) and close it."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=dpi)
    pyplot().close(fig)
    return out_png


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], out_png: str | os.PathLike, *,
                key: str = "error", ylabel: str = "error (%)", title: str = "",
                splits: Sequence[str] = ("train", "val")) -> Path:
    """One colour per run; thin dashed line for training, bold line for validation (as in Fig. 4)."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    styles = {"train": {"linestyle": "--", "linewidth": 1.0}, "val": {"linestyle": "-", "linewidth": 2.2}}
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i}"
        for split in splits:
            xs, ys = series(records, split, key)
            if xs:
                ax.plot(xs, ys, color=color, label=f"{label} ({split})", **styles.get(split, {}))
    ax.set_xlabel("iterations")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)
