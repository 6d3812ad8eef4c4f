"""The one training loop both tasks use.

The task supplies the model, the optimizer, a schedule, a function that makes micro-batches from a start
iteration, and `step(model, batch) -> (losses, stats)`. The loop does the rest: mixed precision, gradient
accumulation, DistributedDataParallel, the learning rate per iteration, a guard against NaN/inf losses,
progress with ETA, metrics, periodic evaluation, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from engine.distributed import DistInfo, all_gather_object, all_reduce, init_distributed
from engine.errors import UserError
from engine.logs import FILE_ONLY, close_file_log, get_logger, log_to_file, progress_bar
from engine.metrics import MetricWriter
from engine.precision import autocast, check_amp
from engine.schedule import LRSchedule

_NONE = torch.iinfo(torch.int64).max  # "no non-finite loss seen yet"

T = TypeVar("T")
Losses = Mapping[str, torch.Tensor]
Stats = Mapping[str, "torch.Tensor | float"]  # per-batch figures besides the losses, e.g. the error


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
    patience: int = 0  # stop after this many evaluations without a new best `best_metric` (0: never)


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


def run_training(cfg: DictConfig, output_dir: str | Path, resume: bool | str | Path,
                 body: Callable[[Path, DistInfo], T]) -> T:
    """`start_run`, then `body(output_dir, dist)`, the run's log file closed whatever happens: the frame of both
    tasks' training functions."""
    output_dir, dist, log_file = start_run(cfg, output_dir, resume)
    try:
        return body(output_dir, dist)
    finally:
        close_file_log(log_file)


def data_parallel(model: nn.Module, dist: DistInfo) -> nn.Module:
    """`model` wrapped for DistributedDataParallel under torchrun (one device per process), else itself."""
    if dist.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda"
                                               else None)


def trainer_options(cfg: DictConfig, output_dir: Path, max_iter: int, best_metric: str | None,
                    best_mode: str = "max") -> TrainerOptions:
    """The loop's options from a task config's `solver` (accumulate, clip_grad_norm) and `train` sections (amp,
    log / eval / checkpoint periods, kept checkpoints, progress, patience)."""
    train = cfg.train
    return TrainerOptions(max_iter=max_iter, output_dir=output_dir, accumulate=cfg.solver.accumulate, amp=train.amp,
                          clip_grad_norm=cfg.solver.clip_grad_norm, log_period=train.log_period,
                          eval_period=train.eval_period, checkpoint_period=train.checkpoint_period,
                          keep_checkpoints=train.keep_checkpoints, progress=train.progress, best_metric=best_metric,
                          best_mode=best_mode, patience=train.get("patience", 0))


def write_summary(output_dir: Path, trainer: Trainer, results: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """`metrics.json`: the final results, the iterations run, `extra`, and where training kept its best model
    (`"best"`) and stopped early (`"stopped_early"`)."""
    summary = {**results, "iterations": trainer.iteration, **extra}
    if trainer.best is not None:
        summary["best"] = {**trainer.best, "checkpoint": "model_best.pth"}
    if trainer.stopped_early is not None:
        summary["stopped_early"] = {"iteration": trainer.stopped_early, "patience": trainer.options.patience}
    (Path(output_dir) / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


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
        check_amp(options.amp)
        self.model = model
        self.module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.optimizer, self.schedule = optimizer, schedule
        self.make_batches, self.step_fn, self.evaluate_fn = make_batches, step, evaluate
        self.options, self.dist = options, dist
        self.checkpoint_extra = checkpoint_extra or dict
        self.save_best_fn = save_best
        if options.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be max or min, got {options.best_mode!r}")
        if options.patience and (options.best_metric is None or not options.eval_period):
            raise UserError("train.patience counts evaluations without a new best: it needs train.eval_period > 0 "
                            "and an evaluation set")
        self.best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of the best evaluation
        self.evals_without_best = 0
        self.stopped_early: int | None = None  # the iteration at which patience ran out
        self.writer = writer or MetricWriter(options.output_dir, enabled=False)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=options.amp == "fp16"
                                           and dist.device.type == "cuda")
        self.iteration = 0
        self.last_eval: dict[str, float] = {}
        self._first_bad = torch.tensor(_NONE, device=dist.device)
        self._loss_names: list[str] = []

    # ----- checkpoints -------------------------------------------------------------------------
    def state_dict(self, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything a resume needs; `rng_states` holds every process's generators (rank order)."""
        rng_states = rng_states or [rng_state()]
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "rng": rng_states[0], "rng_per_rank": rng_states, "best": self.best,
                "evals_without_best": self.evals_without_best, "stopped_early": self.stopped_early,
                **self.checkpoint_extra()}

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0) with every process's random state; all processes must call it."""
        self._check_finite()
        states = all_gather_object(rng_state())  # the detector samples from each rank's generator
        if not self.dist.is_main:
            return None
        out = Path(self.options.output_dir)
        path = save_checkpoint(self.state_dict(states), checkpoint_path(out, self.iteration))
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
        self.evals_without_best = int(state.get("evals_without_best", 0))
        self.stopped_early = state.get("stopped_early")
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) != self.dist.world_size and self.dist.is_main:
            warnings.warn(f"{path}: saved by {len(per_rank)} process(es), resumed by {self.dist.world_size}: the "
                          "data order is the same, the detector's random sampling is not bit-exact", stacklevel=3)
        set_rng_state(per_rank[self.dist.rank % len(per_rank)])
        logger.info(f"resumed from {path} at iteration {self.iteration}")

    # ----- the loop ----------------------------------------------------------------------------
    def _note_finite(self, loss: torch.Tensor) -> None:
        """Remember, on the device, the first iteration whose loss was NaN or infinite (no host sync)."""
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & (self._first_bad == _NONE), self.iteration, self._first_bad)

    def _check_finite(self) -> None:
        """Stop with `TrainingDiverged` if any process saw a non-finite loss since the last check: one host sync,
        done at logging points and before anything is saved or evaluated (so no diverged weights are kept)."""
        first = int(all_reduce(self._first_bad.clone(), "min").item())
        if first != _NONE:
            raise TrainingDiverged(f"loss is not finite at iteration {first}; last good checkpoint kept in "
                                   f"{self.options.output_dir}")

    def run_step(self, batches: Iterator[Any]) -> tuple[dict[str, torch.Tensor], float]:
        """One iteration: `accumulate` micro-batches, one optimizer step. Returns the iteration's losses and stats
        as device tensors, and the lr: nothing here waits for the device, except the error-based warm-up, which
        needs the (all-reduced) training error of every iteration until it ends."""
        opts = self.options
        lr = self.schedule.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        totals: dict[str, torch.Tensor] = {}
        ddp = self.model is not self.module
        for m in range(opts.accumulate):
            batch = next(batches)
            sync = contextlib.nullcontext() if not ddp or m == opts.accumulate - 1 else self.model.no_sync()
            with sync:
                with autocast(self.dist.device, self.options.amp):
                    losses, stats = self.step_fn(self.model, batch)
                loss = sum(losses.values()) / opts.accumulate
                self._note_finite(loss)
                self.scaler.scale(loss).backward()
            for k, v in {**losses, **stats}.items():
                v = torch.as_tensor(v, device=self.dist.device).detach().float() / opts.accumulate
                totals[k] = totals[k] + v if k in totals else v
        if opts.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), opts.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if "error" in totals and not self.schedule.error_warmup_done:
            # every process takes the warm-up decision on the same, global error: replicas stay identical
            error = all_reduce(totals["error"].clone(), "sum") / self.dist.world_size
            self.schedule.observe_train_error(float(error.item()))
        self._loss_names = list(losses)
        return totals, lr

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

    def _out_of_patience(self) -> bool:
        """Whether the last `patience` evaluations brought no new best; decided by the process that evaluates (the
        others get no metrics) and shared, so that every process stops at the same iteration."""
        out = torch.tensor(int(self.evals_without_best >= self.options.patience), device=self.dist.device)
        return bool(all_reduce(out, "max").item())

    def _track_best(self, metrics: Mapping[str, float]) -> None:
        name = self.options.best_metric
        if name is None or metrics.get(name) is None:
            return
        value = float(metrics[name])
        if self.best is not None and self.best["metric"] == name and not (
                value > self.best["value"] if self.options.best_mode == "max" else value < self.best["value"]):
            self.evals_without_best += 1
            return
        self.evals_without_best = 0
        self.best = {"metric": name, "value": value, "iteration": self.iteration}
        if self.save_best_fn is not None and self.dist.is_main:
            self.save_best_fn()
            logger.info(f"new best {name} {value:.4g} at iteration {self.iteration}")

    def train(self) -> dict[str, float]:
        opts = self.options
        if self.iteration >= opts.max_iter or self.stopped_early is not None:
            return self.last_eval or self.run_eval(feed_schedule=False)
        self.model.train()
        batches = iter(self.make_batches(self.iteration))
        window: dict[str, list[torch.Tensor]] = defaultdict(list)
        lrs: list[float] = []
        # on a terminal a progress bar; otherwise (or with progress off) plain periodic lines on stdout
        bar = progress_bar(total=opts.max_iter, initial=self.iteration, enabled=opts.progress and self.dist.is_main,
                           desc="train", unit="it")
        bar_on = not bar.disable
        logger.info(f"training from iteration {self.iteration} to {opts.max_iter}")
        clock, clock_iter = time.perf_counter(), self.iteration
        self._first_bad = torch.tensor(_NONE, device=self.dist.device)
        try:
            while self.iteration < opts.max_iter:
                values, lr = self.run_step(batches)
                self.iteration += 1
                for k, v in values.items():
                    window[k].append(v)
                lrs.append(lr)
                bar.update(1)
                if self.iteration % opts.log_period == 0 or self.iteration == opts.max_iter:
                    self._check_finite()
                    names = list(window)
                    means = dict(zip(names, torch.stack([torch.stack(window[k]).mean() for k in names]).tolist(),
                                     strict=True))  # one transfer from the device per logging point
                    means["lr"] = sum(lrs) / len(lrs)
                    means["loss"] = sum(means[k] for k in self._loss_names)
                    lrs.clear()
                    self.writer.write(self.iteration, "train", means)
                    window.clear()
                    now = time.perf_counter()
                    per_iter = (now - clock) / max(1, self.iteration - clock_iter)
                    clock, clock_iter = now, self.iteration
                    bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{means['lr']:.2g}")
                    self._log_line(means, self._loss_names, per_iter, bar_on)
                if opts.eval_period and self.iteration % opts.eval_period == 0 and self.iteration < opts.max_iter:
                    self._check_finite()
                    self.run_eval()
                    clock = time.perf_counter()  # evaluation time is not training time
                    if opts.patience and self._out_of_patience():
                        self.stopped_early = self.iteration
                if (self.iteration % opts.checkpoint_period == 0 or self.iteration == opts.max_iter
                        or self.stopped_early is not None):
                    self.save()
                if self.stopped_early is not None:
                    if self.dist.is_main:
                        logger.info(f"stopping early at iteration {self.iteration}: no new best {opts.best_metric} in "
                                    f"{opts.patience} evaluations (train.patience); the best, {self.best['value']:.4g} "
                                    f"at iteration {self.best['iteration']}, is kept")
                    return self.last_eval
        finally:
            bar.close()
        self._check_finite()
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
