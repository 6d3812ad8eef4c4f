"""Timing helpers shared by the benchmarks: warm-up, interleaved repeats, median, device sync."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                      warmup: int = 2) -> dict[str, dict[str, float]]:
    """Median wall-clock and process CPU seconds per call of each function (`{name: {"wall", "cpu"}}`),
    alternating between them so that drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync(device)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                        warmup: int = 2) -> dict[str, float]:
    """Median wall-clock seconds per call of each function, alternating between them."""
    return {name: t["wall"] for name, t in interleaved_times(fns, device, repeats, warmup).items()}


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU x{torch.get_num_threads()} threads, torch {torch.__version__}"
