"""Timing helpers shared by the benchmarks: warm-up, interleaved repeats, median, device sync."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: how far one implementation's tensor is from the reference's."""
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


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


def cpu_model() -> str:
    """The processor's name and the widest vector instructions it has (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = next((v for v in ("avx512f", "avx2", "avx", "sse4_2") if v in flags), "")
    return f"{name}{f' ({vector})' if vector else ''}"


def machine_line(device: torch.device) -> str:
    """What two machines' figures differ by: the processor (or GPU), cores, the threads torch uses (and the
    OMP / MKL settings), and torch's build (CUDA or CPU-only, oneDNN)."""
    build = f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only'} build"
    build += f", oneDNN {torch.backends.mkldnn.is_available()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {build}"
    settings = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    return (f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
            f"{f' ({settings})' if settings else ''}; {build}")
