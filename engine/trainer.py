"""The one training loop both tasks use.

The task supplies the model, the optimizer, a schedule, a function that makes micro-batches from a start
iteration, and `step(model, batch) -> (losses, stats)`. The loop does the rest: mixed precision, gradient
accumulation, DistributedDataParallel, the learning rate per iteration, a guard against NaN/inf losses,
progress with ETA, metrics, periodic evaluation, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import datetime
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from engine.checkpoint import (
    checkpoint_path,
    find_last,
    holds_run,
    load_checkpoint,
    mark_last,
    prune_checkpoints,
    remove_partial_saves,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from engine.config import save_config
from engine.distributed import DistInfo, all_gather_object, all_reduce_sum, init_distributed
from engine.errors import UserError
from engine.logs import FILE_ONLY, get_logger, log_to_file, progress_bar
from engine.metrics import MetricWriter
from engine.schedule import LRSchedule

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Losses = Mapping[str, torch.Tensor]
Stats = Mapping[str, float]


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; nothing is saved for that iteration."""


@dataclass
class TrainerOptions:
    max_iter: int
    output_dir: Path
    accumulate: int = 1
    amp: str = "none"
    clip_grad_norm: float = 0.0
    log_period: int = 20
    eval_period: int = 0  # 0: evaluate only at the end
    checkpoint_period: int = 1000
    keep_checkpoints: int = 2
    progress: bool = True
    best_metric: str | None = None  # an evaluation key: the best evaluation so far is kept (`save_best`)
    best_mode: str = "max"  # "max" for AP, "min" for an error


logger = get_logger("trainer")


def start_run(cfg: DictConfig, output_dir: str | Path, resume: bool | str | Path = False
              ) -> tuple[Path, DistInfo, Any]:
    """Join the process group torchrun describes, make sure `output_dir` does not already hold a run (unless
    resuming it), remove what a killed save left behind, write `config.yaml` and start `log.txt` (rank 0),
    and seed torch from `cfg.train.seed`. Returns the folder, the process description and the log handler
    (for `engine.logs.close_file_log`)."""
    output_dir = Path(output_dir)
    dist = init_distributed(cfg.train.device)
    used = all_gather_object(holds_run(output_dir) if dist.is_main else False)[0]
    if used and not resume:
        raise UserError(f"{output_dir}: already holds a training run; continue it with --resume, or give another "
                        "--output (nothing in it was changed)")
    handler = None
    if dist.is_main:
        if output_dir.exists() and not output_dir.is_dir():
            raise UserError(f"{output_dir}: --output exists and is not a folder")
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_partial_saves(output_dir):
            warnings.warn(f"removed {path.name}, left by a save that was interrupted", stacklevel=2)
        save_config(cfg, output_dir / "config.yaml")
        handler = log_to_file(output_dir / "log.txt")
    torch.manual_seed(cfg.train.seed)
    return output_dir, dist, handler


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 make_batches: Callable[[int], Iterator[Any]],
                 step: Callable[[nn.Module, Any], tuple[Losses, Stats]],
                 options: TrainerOptions, dist: DistInfo, *,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
                 save_best: Callable[[], None] | None = None,
                 writer: MetricWriter | None = None) -> None:
        if options.amp not in AMP_DTYPES:
            raise UserError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {options.amp!r}")
        self.model = model
        self.module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.optimizer, self.schedule = optimizer, schedule
        self.make_batches, self.step_fn, self.evaluate_fn = make_batches, step, evaluate
        self.options, self.dist = options, dist
        self.checkpoint_extra = checkpoint_extra or dict
        self.save_best_fn = save_best
        if options.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be max or min, got {options.best_mode!r}")
        self.best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of the best evaluation
        self.writer = writer or MetricWriter(options.output_dir, enabled=False)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=options.amp == "fp16"
                                           and dist.device.type == "cuda")
        self.iteration = 0
        self.last_eval: dict[str, float] = {}

    # ----- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "rng": rng_state(), "best": self.best, **self.checkpoint_extra()}

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        out = Path(self.options.output_dir)
        path = save_checkpoint(self.state_dict(), checkpoint_path(out, self.iteration))
        mark_last(out, path)
        prune_checkpoints(out, self.iteration, self.options.keep_checkpoints)
        return path

    def resume_from(self, resume: bool | str | Path) -> None:
        """`True`: continue from the run folder's last checkpoint (a warning if it has none);
        a path: from that checkpoint; `False`: start at iteration 0."""
        if not resume:
            return
        path = find_last(self.options.output_dir) if resume is True else Path(resume)
        if path is not None:
            self.resume(path)
        elif self.dist.is_main:
            warnings.warn(f"--resume: no checkpoint in {self.options.output_dir}; starting from iteration 0",
                          stacklevel=3)

    def resume(self, path: str | Path) -> None:
        state = load_checkpoint(path)
        missing = {"model", "optimizer", "schedule", "iteration", "rng"} - state.keys()
        if missing:
            raise UserError(f"{path}: not a training checkpoint (missing {', '.join(sorted(missing))})")
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UserError(f"{path}: checkpoint does not fit this model ({str(exc).splitlines()[0]})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best = state.get("best")
        set_rng_state(state["rng"])
        logger.info(f"resumed from {path} at iteration {self.iteration}")

    # ----- the loop ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = AMP_DTYPES[self.options.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def _check_finite(self, losses: Losses, loss: torch.Tensor) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        if all_reduce_sum(bad).item():
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise TrainingDiverged(f"loss is not finite at iteration {self.iteration} ({shown}); "
                                   f"last good checkpoint kept in {self.options.output_dir}")

    def run_step(self, batches: Iterator[Any]) -> tuple[dict[str, float], dict[str, float]]:
        opts = self.options
        lr = self.schedule.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        totals: dict[str, float] = defaultdict(float)
        stats_sum: dict[str, float] = defaultdict(float)
        ddp = self.model is not self.module
        for m in range(opts.accumulate):
            batch = next(batches)
            sync = contextlib.nullcontext() if not ddp or m == opts.accumulate - 1 else self.model.no_sync()
            with sync:
                with self._autocast():
                    losses, stats = self.step_fn(self.model, batch)
                loss = sum(losses.values()) / opts.accumulate
                self._check_finite(losses, loss)
                self.scaler.scale(loss).backward()
            for k, v in losses.items():
                totals[k] += v.item() / opts.accumulate
            for k, v in stats.items():
                stats_sum[k] += v / opts.accumulate
        if opts.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), opts.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if "error" in stats_sum:
            self.schedule.observe_train_error(stats_sum["error"])
        return dict(totals), {"lr": lr, **stats_sum}

    def run_eval(self, feed_schedule: bool = True) -> dict[str, float]:
        """Evaluate, log as `val`, and (unless told not to) let a plateau schedule see the error."""
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate_fn(self.module)
        self.model.train()
        self.writer.write(self.iteration, "val", metrics)
        if metrics:
            logger.info(f"evaluation at iteration {self.iteration}: "
                        + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if "error" in metrics and feed_schedule:
            self.schedule.observe_val_error(metrics["error"])
        self._track_best(metrics)
        self.last_eval = metrics
        return metrics

    def _track_best(self, metrics: Mapping[str, float]) -> None:
        name = self.options.best_metric
        if name is None or metrics.get(name) is None:
            return
        value = float(metrics[name])
        if self.best is not None and self.best["metric"] == name and not (
                value > self.best["value"] if self.options.best_mode == "max" else value < self.best["value"]):
            return
        self.best = {"metric": name, "value": value, "iteration": self.iteration}
        if self.save_best_fn is not None and self.dist.is_main:
            self.save_best_fn()
            logger.info(f"new best {name} {value:.4g} at iteration {self.iteration}")

    def train(self) -> dict[str, float]:
        opts = self.options
        if self.iteration >= opts.max_iter:
            return self.last_eval or self.run_eval(feed_schedule=False)
        self.model.train()
        batches = iter(self.make_batches(self.iteration))
        window: dict[str, list[float]] = defaultdict(list)
        # on a terminal a progress bar; otherwise (or with progress off) plain periodic lines on stdout
        bar = progress_bar(total=opts.max_iter, initial=self.iteration, enabled=opts.progress and self.dist.is_main,
                           desc="train", unit="it")
        bar_on = not bar.disable
        logger.info(f"training from iteration {self.iteration} to {opts.max_iter}")
        clock, clock_iter = time.perf_counter(), self.iteration
        try:
            while self.iteration < opts.max_iter:
                losses, stats = self.run_step(batches)
                self.iteration += 1
                for k, v in {**losses, **stats}.items():
                    window[k].append(v)
                loss = sum(losses.values())
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{stats['lr']:.2g}", refresh=False)
                if self.iteration % opts.log_period == 0 or self.iteration == opts.max_iter:
                    means = {k: sum(v) / len(v) for k, v in window.items()}
                    means["loss"] = sum(means[k] for k in losses)
                    self.writer.write(self.iteration, "train", means)
                    window.clear()
                    now = time.perf_counter()
                    per_iter = (now - clock) / max(1, self.iteration - clock_iter)
                    clock, clock_iter = now, self.iteration
                    self._log_line(means, list(losses), per_iter, bar_on)
                if opts.eval_period and self.iteration % opts.eval_period == 0 and self.iteration < opts.max_iter:
                    self.run_eval()
                    clock = time.perf_counter()  # evaluation time is not training time
                if self.iteration % opts.checkpoint_period == 0 or self.iteration == opts.max_iter:
                    self.save()
        finally:
            bar.close()
        # the end of a run counts as a periodic evaluation only where one was due, so that extending a
        # finished run with a larger max_iter continues exactly as a longer run would have
        periodic = bool(opts.eval_period) and self.iteration % opts.eval_period == 0
        return self.run_eval(feed_schedule=periodic)

    def _log_line(self, means: Mapping[str, float], loss_names: list[str], per_iter: float, bar_on: bool) -> None:
        """`iter 40/1200  loss 1.234  loss_cls 0.31 ...  lr 0.01  0.52 s/iter  eta 0:10:03` (as detectron2 prints)."""
        if not self.dist.is_main:
            return
        parts = [f"iter {self.iteration}/{self.options.max_iter}", f"loss {means['loss']:.4f}"]
        parts += [f"{k} {means[k]:.4f}" for k in loss_names]
        parts += [f"{k} {v:.4g}" for k, v in means.items() if k not in loss_names and k not in ("loss", "lr")]
        parts += [f"lr {means['lr']:.4g}", f"{per_iter:.3f} s/iter",
                  f"eta {_duration(per_iter * (self.options.max_iter - self.iteration))}"]
        logger.info("  ".join(parts), extra=FILE_ONLY if bar_on else None)
