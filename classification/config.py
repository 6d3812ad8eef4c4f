"""The classification config schema: every key with its default (`DEFAULTS`), the free-form sections
(`OPEN_KEYS`), the values each key may take (`LIMITS`, checked by `engine.config`) and what `--resume` may change
(`RESUME_MAY_CHANGE`). `tools/train_cls.py`, `eval_cls.py` and `analyze_responses.py` read configs with it."""

from __future__ import annotations

from typing import Any

DATASETS = ("imagenet", "cifar10", "synthetic")

DEFAULTS: dict[str, Any] = {
    "model": {"arch": "resnet18", "options": {}, "weights": None},
    "data": {
        "dataset": "synthetic", "root": None, "train_split": None, "val_split": None, "workers": 2,
        "skip_bad_images": False, "crop_size": None, "scale_range": [256, 480], "lighting": 0.1, "pad_fill": "mean",
        "decode_on_device": False, "test_resize": 256, "test_scales": [224, 256, 384, 480, 640],
        "synthetic": {"train_size": 2048, "val_size": 512, "num_classes": 10, "image_size": 32},
    },
    "solver": {
        "batch_size": 256, "accumulate": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False,
        "max_iter": 600_000, "epochs": None, "steps": [], "gamma": 0.1, "warmup_iters": 0, "warmup_factor": 0.1,
        "warmup_method": "constant", "warmup_until_error": None, "error_window": 50, "plateau_patience": 0,
        "plateau_threshold": 0.1, "clip_grad_norm": 0.0,
    },
    "train": {
        "seed": 0, "device": "auto", "amp": "none", "channels_last": False, "compile": False, "log_period": 20,
        "eval_period": 0, "checkpoint_period": 5000, "keep_checkpoints": 2, "eval_batch_size": 100, "recompute_bn": 0,
        "progress": True, "patience": 0,  # stop after this many evaluations without a lower error (0: never)
    },
}
OPEN_KEYS = ("model.options",)
# the values each key may take (engine.config.check_limits)
LIMITS = {"data.workers": "[0, inf)", "data.crop_size": "[1, inf)", "data.scale_range": "[1, inf)",
          "data.lighting": "[0, inf)", "data.test_resize": "[1, inf)", "data.test_scales": "[1, inf)",
          "data.synthetic.train_size": "[1, inf)", "data.synthetic.val_size": "[1, inf)",
          "data.synthetic.num_classes": "[2, inf)", "data.synthetic.image_size": "[8, inf)",
          "solver.batch_size": "[1, inf)", "solver.accumulate": "[1, inf)", "solver.lr": "(0, inf)",
          "solver.momentum": "[0, 1)", "solver.weight_decay": "[0, inf)", "solver.max_iter": "[1, inf)",
          "solver.epochs": "(0, inf)", "solver.steps": "[1, inf)", "solver.gamma": "(0, inf)",
          "solver.warmup_iters": "[0, inf)", "solver.warmup_factor": "[0, 1]", "solver.warmup_until_error": "[0, 100]",
          "solver.error_window": "[1, inf)", "solver.plateau_patience": "[0, inf)",
          "solver.plateau_threshold": "[0, inf)", "solver.clip_grad_norm": "[0, inf)", "train.log_period": "[1, inf)",
          "train.eval_period": "[0, inf)", "train.checkpoint_period": "[1, inf)", "train.keep_checkpoints": "[1, inf)",
          "train.eval_batch_size": "[1, inf)", "train.recompute_bn": "[0, inf)", "train.patience": "[0, inf)",
          "train.amp": "{none, bf16, fp16}",
          "data.pad_fill": "{mean, zero}", "solver.warmup_method": "{constant, linear}",
          "data.dataset": "{imagenet, cifar10, synthetic}"}

# what `--resume` may change in a run's saved configuration (see detection.train.RESUME_MAY_CHANGE)
RESUME_MAY_CHANGE = ("solver.max_iter", "data.root", "data.workers", "train.device", "train.progress",
                     "train.log_period", "train.checkpoint_period", "train.keep_checkpoints", "train.eval_batch_size")
