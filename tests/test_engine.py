"""The shared runtime: configs, checkpoints, the sampler, LR schedules, the trainer's guards, the CLI wrapper."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.checkpoint import find_last, load_checkpoint, mark_last, save_checkpoint
from engine.cli import run_cli
from engine.config import load_config, parse_key_values
from engine.distributed import DistInfo
from engine.errors import UserError
from engine.sampler import GlobalBatchSampler, SeededDataset
from engine.schedule import LRSchedule
from engine.trainer import Trainer, TrainerOptions, TrainingDiverged
from tests.helpers import ROOT

DEFAULTS = {"model": {"arch": "resnet18", "options": {}}, "solver": {"lr": 0.1, "steps": [10], "epochs": None}}


def test_config_layers_and_errors(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("solver:\n  lr: 0.5\n  steps: [1, 2]\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("_base_: base.yaml\nmodel:\n  arch: resnet50\n  options:\n    width: 8\n")
    cfg = load_config(DEFAULTS, recipe, ["solver.lr=0.01", "solver.epochs=3"], open_keys=["model.options"])
    assert cfg.model.arch == "resnet50" and cfg.model.options.width == 8
    assert cfg.solver.lr == 0.01 and list(cfg.solver.steps) == [1, 2] and cfg.solver.epochs == 3

    typo = tmp_path / "typo.yaml"
    typo.write_text("solver:\n  lrr: 0.5\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown key 'solver.lrr'"):
        load_config(DEFAULTS, typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("solver:\n  lr: [0.1\n")
    with pytest.raises(UserError, match=r"broken.yaml: invalid YAML \(line 3\)"):
        load_config(DEFAULTS, broken)
    with pytest.raises(UserError, match="solver.lr must be float like 0.1, got 'fast'"):
        load_config(DEFAULTS, None, ["solver.lr=fast"])
    with pytest.raises(UserError, match="missing.yaml: config file not found"):
        load_config(DEFAULTS, tmp_path / "missing.yaml")
    assert parse_key_values(["a=1", "b=true", "c=B", "d=[1, 2]"]) == {"a": 1, "b": True, "c": "B", "d": [1, 2]}


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"w": torch.ones(3)}, path)
    mark_last(tmp_path, path)

    def dies_mid_write(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # e.g. the job is killed while writing

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"w": torch.zeros(3)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "last_checkpoint"]
    assert find_last(tmp_path) == path
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pth: corrupt or unsafe checkpoint"):
        load_checkpoint(tmp_path / "bad.pth")


def test_global_batches_split_over_ranks_and_accumulation_alike():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    single = take(GlobalBatchSampler(40, 8, seed=3), 10)
    accumulated = take(GlobalBatchSampler(40, 8, accumulate=2, seed=3), 20)
    ranks = [take(GlobalBatchSampler(40, 8, rank=r, world_size=2, seed=3), 10) for r in range(2)]
    for t in range(10):
        assert accumulated[2 * t] + accumulated[2 * t + 1] == single[t] == ranks[0][t] + ranks[1][t]
    epoch = [i for batch in single[:5] for _, i in batch]
    assert sorted(epoch) == list(range(40))  # 5 iterations of 8 cover the epoch once
    assert single[5:] == take(GlobalBatchSampler(40, 8, seed=3, start_iter=5), 5)  # resume = skip ahead
    assert single[0] != single[5]  # each epoch has its own order and seeds
    with pytest.raises(UserError, match="not divisible"):
        GlobalBatchSampler(40, 6, world_size=4)
    with pytest.raises(UserError, match="fewer than one batch"):
        GlobalBatchSampler(4, 8)


def test_seeded_dataset_reproduces_randomness_per_sample():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2)

    ds = SeededDataset(Noise())
    state = torch.get_rng_state()
    a, b = ds[(7, 0)], ds[(7, 0)]
    assert torch.equal(a, b) and not torch.equal(a, ds[(8, 0)])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched


def test_seeded_dataset_seeds_only_the_cpu_generator(monkeypatch):
    """A sample draws what `torch.manual_seed(seed)` would give, without touching the CUDA generators (seeding
    them formats a stack trace per sample on a CUDA build without a GPU, and reseeds the caller's CUDA RNG)."""
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.rand(3)

    cuda_seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeds.append)
    sample = SeededDataset(Noise())[(11, 0)]
    assert cuda_seeds == []
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(11)
        assert torch.equal(sample, torch.rand(3))


def test_lr_schedule_steps_warmups_and_plateau():
    s = LRSchedule(0.1, steps=[100, 200], warmup_iters=10, warmup_factor=0.1, warmup_method="linear")
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(5) == pytest.approx(0.055)
    assert s.lr_at(10) == pytest.approx(0.1) and s.lr_at(100) == pytest.approx(0.01)
    assert s.lr_at(250) == pytest.approx(0.001)

    warm = LRSchedule(0.1, warmup_until_error=80.0, warmup_factor=0.1, error_window=3)
    for err in (95, 90, 70):
        warm.observe_train_error(err)
    assert warm.lr_at(500) == pytest.approx(0.01)  # mean 85% is not below 80% yet
    warm.observe_train_error(60)  # window (90, 70, 60): mean 73.3%
    assert warm.lr_at(500) == pytest.approx(0.1)

    plateau = LRSchedule(0.1, plateau_patience=2)
    drops = [plateau.observe_val_error(e) for e in (50, 40, 40, 40.0005, 39, 39, 39)]
    assert drops == [False, False, False, True, False, False, True]
    assert plateau.lr_at(0) == pytest.approx(0.001)
    copy = LRSchedule(0.1, plateau_patience=2)
    copy.load_state_dict(plateau.state_dict())
    assert copy.state_dict() == plateau.state_dict()


def _tiny_trainer(tmp_path, step, max_iter=3):
    model = nn.Linear(2, 1)
    options = TrainerOptions(max_iter=max_iter, output_dir=tmp_path, checkpoint_period=1, progress=False)
    batches = lambda start: iter(lambda: torch.ones(4, 2), None)  # noqa: E731 - endless identical batches
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), LRSchedule(0.1), batches, step, options,
                   DistInfo(0, 1, 0, torch.device("cpu")))


def test_nan_loss_stops_training_naming_the_iteration_and_keeps_good_checkpoints(tmp_path):
    calls = []

    def step(model, batch):
        calls.append(1)
        loss = model(batch).mean()
        return {"loss_a": loss * (float("nan") if len(calls) == 3 else 1.0)}, {}

    trainer = _tiny_trainer(tmp_path, step, max_iter=5)
    with pytest.raises(TrainingDiverged, match=r"not finite at iteration 2; last good checkpoint"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_0000001.pth",
                                                                     "checkpoint_0000002.pth"]
    assert load_checkpoint(find_last(tmp_path))["iteration"] == 2


def test_cli_prints_one_line_for_user_errors_and_os_errors(capsys, tmp_path):
    def fails_in_worker(argv):
        raise UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\nengine.errors.UserError: /data/a.jpg: unreadable image")

    assert run_cli(fails_in_worker, []) == 2
    assert capsys.readouterr().err == "error: /data/a.jpg: unreadable image\n"

    def unwritable(argv):
        os.mkdir(Path(tmp_path) / "missing" / "dir")

    assert run_cli(unwritable, []) == 2
    assert "missing/dir: No such file or directory" in capsys.readouterr().err


_LOADER_AFTER_OPENCV = """
import cv2, numpy as np, torch
from engine.sampler import ShardSampler, seeded_loader
image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
class Blurred(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, i): return torch.tensor(cv2.GaussianBlur(image[:64, :64], (5, 5), 0).mean())
for _ in range(12):
    cv2.GaussianBlur(image, (9, 9), 0)  # the parent's OpenCV thread pool is busy when the workers fork
    assert len(list(seeded_loader(Blurred(), ShardSampler(8, 2, 0, 1), 2, torch.stack))) == 4
print("done")
"""


@pytest.mark.slow
def test_loader_workers_forked_after_opencv_ran_in_parallel_finish():
    """A worker that reconfigures OpenCV's thread pool it inherited through fork can wait forever (it did, with
    `cv2.setNumThreads` in `worker_init_fn`): loading must finish however the parent used OpenCV before."""
    result = subprocess.run([sys.executable, "-c", _LOADER_AFTER_OPENCV], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
