"""Every row of docs/benchmarks.md's "GPU figures" table in one run, for the first machine with a GPU.

The test suite on CUDA (the tools' `--device auto` takes the GPU), then each benchmark as its own process under
its own time limit (about ten minutes in all on one current GPU): ResNet-50 training with AMP bf16 and
channels-last, our detectors against torchvision's (R50-FPN) and R101-C4 training and inference, CIFAR
ResNet-110, and `train_cls.py` on an ImageNet-layout folder with the JPEGs decoded on the GPU against on the CPU.
Each step's output is printed as it comes; at the end a markdown summary (command, exit code, seconds, the
figures' lines) is printed and written to `--output`, for docs/benchmarks.md.

    python -m benchmarks.gpu_figures [--output gpu_figures.md] [--skip-tests]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.bench_cls_train import _sample_jpegs
from benchmarks.common import machine_line

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: int
    keep: str = r"img/s|s/iter|ratio|speed|ours|torchvision|passed|failed"  # lines worth the summary


def benchmark_steps() -> list[Step]:
    """The table's rows as commands (their targets are in docs/benchmarks.md)."""
    return [
        Step("ResNet-50 training, AMP bf16, channels-last, synthetic batches (img/s; A100 reference 2,470)",
             [PY, "-m", "benchmarks.bench_cls_train", "--arch", "resnet50", "--batch-size", "256", "--image-size",
              "224", "--amp", "bf16", "--channels-last", "--skip-data", "--device", "cuda", "--iters", "30"], 150),
        Step("Detectors: ours against torchvision's R50-FPN, and R101-C4 (s/iter, 2 images at 800 px, bf16; "
             "detectron2 R101-C4 on a V100: 0.619 train, 0.139 inference)",
             [PY, "-m", "benchmarks.bench_detector", "--device", "cuda", "--batch", "2", "--amp", "bf16",
              "--c4-recipe", "detectron2_R101_C4"], 240),
        Step("CIFAR ResNet-110 training (img/s)",
             [PY, "-m", "benchmarks.bench_cls_train", "--arch", "cifar_resnet110", "--batch-size", "128",
              "--image-size", "32", "--device", "cuda", "--skip-data"], 90),
    ]


def run_step(step: Step) -> dict:
    """Run one command, echoing its output, and keep the lines that carry figures."""
    print(f"\n== {step.name}\n$ {' '.join(step.argv)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(step.argv, cwd=ROOT, capture_output=True, text=True, timeout=step.limit_s)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as late:
        code, out = f"timed out after {step.limit_s} s", late.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
    print(out, flush=True)
    lines = [line for line in out.splitlines() if re.search(step.keep, line)]
    return {"name": step.name, "command": " ".join(step.argv[1:]), "code": code,
            "seconds": time.perf_counter() - start, "lines": lines[-12:]}


def decode_on_device_step(workdir: Path) -> list[dict]:
    """`train_cls.py` on an ImageNet-layout folder of 500x375 JPEGs, decoded on the CPU by the loader workers and
    then on the GPU (`data.decode_on_device=true`): the s/iter of each, from the runs' last log line."""
    files = _sample_jpegs(None, workdir)  # 64 written 500x375 JPEGs
    for split, per_class in (("train", 64), ("val", 8)):
        for c in range(2):
            folder = workdir / "imagenet" / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{c}_{i}.JPEG").write_bytes(files[(c * per_class + i) % len(files)].read_bytes())
    results = []
    for on_device in ("false", "true"):
        argv = [PY, "tools/train_cls.py", "--dataset", "imagenet", "--data", str(workdir / "imagenet"), "--arch",
                "resnet50", "--batch-size", "128", "--max-iter", "40", "--amp", "bf16", "--no-progress", "--workers",
                "8", "--output", str(workdir / f"decode_on_device_{on_device}"), f"data.decode_on_device={on_device}",
                "train.log_period=20", "train.eval_period=0"]
        results.append(run_step(Step(f"ImageNet input, JPEGs decoded on the {'GPU' if on_device == 'true' else 'CPU'}"
                                     " (train_cls.py ResNet-50 bf16, s/iter)", argv, 150, keep=r"s/iter")))
    return results


def summary(results: list[dict], machine: str) -> str:
    lines = ["# GPU figures", "", f"Machine: {machine}.", ""]
    for r in results:
        lines += [f"## {r['name']}", "", f"`python {r['command']}`: exit {r['code']}, {r['seconds']:.0f} s", "",
                  "```", *r["lines"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu_figures.md", help="the markdown summary")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmarks")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: CUDA: no GPU visible to torch; the GPU figures need one (the CPU figures have their own "
              "benchmarks)", file=sys.stderr)
        sys.exit(2)
    machine = machine_line(torch.device("cuda"))
    print(machine, flush=True)
    results = []
    if not args.skip_tests:
        results.append(run_step(Step("The test suite on CUDA", [PY, "-m", "pytest", "-q", "-x", "-p",
                                                                 "no:cacheprovider"], 420, keep=r"passed|failed")))
    results += [run_step(step) for step in benchmark_steps()]
    with tempfile.TemporaryDirectory() as tmp:
        results += decode_on_device_step(Path(tmp))
    text = summary(results, machine)
    Path(args.output).write_text(text, encoding="utf-8")
    print("\n" + text)


if __name__ == "__main__":
    main()
