"""Classification datasets: ImageNet folder layout, CIFAR-10 python batches, and a synthetic set.

Every dataset returns `(image, label)` where `image` is a PIL image (the transforms make tensors) and
`label` an int. Bad files raise `UserError` naming the file; with `skip_bad=True` a bad image yields
`None`, which `collate_skip_bad` drops and counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset, default_collate

from classification.config import DATASETS
from engine.errors import UserError
from engine.images import IMAGE_EXTENSIONS, load_rgb, read_for_device_decoding
from engine.unpickle import load_numpy_pickle


class ImageFolder(Dataset):
    """`root/<class>/<image>` with classes in sorted folder order (as torchvision's ImageFolder).
    `decode_min_side`: the transform needs no more than this shorter side (see `engine.images.load_rgb`).
    `encoded`: images are not decoded here but returned as `engine.images.read_for_device_decoding` gives them
    (JPEG bytes) with their path, for `DeviceTrainTransform`; `transform` is then not used."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, skip_bad: bool = False,
                 decode_min_side: int | None = None, encoded: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: dataset split folder not found")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise UserError(f"{root}: no class folders (expected {root}/<class>/<image>)")
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise UserError(f"{root / name}: class folder has no images")
            self.samples += [(str(f), label) for f in files]
        self.transform, self.skip_bad, self.decode_min_side = transform, skip_bad, decode_min_side
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, label = self.samples[index]
        try:
            if self.encoded:
                return (read_for_device_decoding(path), path), label
            image = load_rgb(path, self.decode_min_side)
        except UserError:
            if self.skip_bad:
                return None
            raise
        return (self.transform(image) if self.transform else image), label


CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, list[int]]:
    """One CIFAR-10 python batch as (N x 32 x 32 x 3 uint8 images, labels), read with a restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: CIFAR-10 batch file not found (expected cifar-10-batches-py/{path.name})")
    batch = load_numpy_pickle(path, "bytes", "not a CIFAR-10 python batch")
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR-10 python batch (holds a {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: 'data' must be an N x 3072 uint8 array")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(0 <= int(v) < 10 for v in labels):
        raise UserError(f"{path}: 'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), [int(v) for v in labels]


class CIFAR10(Dataset):
    """CIFAR-10 from `root` (the `cifar-10-batches-py` folder or its parent).

    Splits: `train` (all 50k), `test` (10k), and the paper's analysis split: `train45k` (first 45k of the
    training set) with `val5k` (its last 5k).
    """

    SPLITS = ("train", "test", "train45k", "val5k")

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None) -> None:
        if split not in self.SPLITS:
            raise UserError(f"unknown CIFAR-10 split {split!r}; valid: {', '.join(self.SPLITS)}")
        root = Path(root)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        files = CIFAR_TEST_FILES if split == "test" else CIFAR_TRAIN_FILES
        parts = [read_cifar_batch(root / name) for name in files]
        images = np.concatenate([p[0] for p in parts])
        labels = [label for p in parts for label in p[1]]
        if split in ("train45k", "val5k"):
            cut = len(images) * 9 // 10
            sl = slice(0, cut) if split == "train45k" else slice(cut, None)
            images, labels = images[sl], labels[sl]
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = list(CIFAR10_CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), self.labels[index]


class SyntheticImages(Dataset):
    """A deterministic, learnable stand-in for a real dataset: each class is a smooth colour pattern (fixed
    by `pattern_seed`, shared by all splits), each sample that pattern shifted, rescaled in contrast and
    noised (drawn from `seed`, which differs between splits). Needs no files; sample `i` is always the same."""

    def __init__(self, num_samples: int = 512, num_classes: int = 10, image_size: int = 32, seed: int = 0,
                 transform: Callable | None = None, pattern_seed: int = 0) -> None:
        self.num_samples, self.num_classes, self.image_size = num_samples, num_classes, image_size
        self.seed, self.transform = seed, transform
        self.classes = [f"class_{i}" for i in range(num_classes)]
        g = torch.Generator().manual_seed(pattern_seed)
        coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
        self.patterns = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bicubic",
                                                        align_corners=False).clamp(0, 1)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Any, int]:
        label = index % self.num_classes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        shift = torch.randint(-self.image_size // 8, self.image_size // 8 + 1, (2,), generator=g)
        img = torch.roll(self.patterns[label], shifts=(int(shift[0]), int(shift[1])), dims=(1, 2))
        contrast = 0.4 + 0.6 * torch.rand(1, generator=g)
        img = (0.5 + (img - 0.5) * contrast + 0.15 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        image = Image.fromarray((img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        return (self.transform(image) if self.transform else image), label


def collate_skip_bad(batch: Sequence[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the good samples; the third element counts the bad ones (returned as None) that were dropped."""
    good = [b for b in batch if b is not None]
    if not good:
        raise UserError("a whole batch of images was unreadable; check the dataset")
    first = good[0][0]
    if isinstance(first, (list, tuple)):  # multi-scale views, (undecoded image, path): a list
        images, labels = [g[0] for g in good], torch.tensor([g[1] for g in good])
    else:
        images, labels = default_collate(good)
    return images, labels, len(batch) - len(good)


def dataset_style(dataset: str) -> str:
    """The transforms and statistics a dataset is trained with: ImageNet's, or CIFAR's (also the synthetic set)."""
    return "imagenet" if dataset == "imagenet" else "cifar"


def build_dataset(cfg: DictConfig, split: str, transform: Any, train: bool) -> tuple[Dataset, int]:
    """The dataset `cfg.data.dataset` for `split` (None: the dataset's usual train/val split) and its class count."""
    data = cfg.data
    if data.dataset not in DATASETS:
        raise UserError(f"unknown dataset {data.dataset!r}; valid: {', '.join(DATASETS)}")
    if data.dataset == "synthetic":
        syn = data.synthetic
        size = syn.train_size if train else syn.val_size
        ds = SyntheticImages(size, syn.num_classes, syn.image_size, seed=0 if train else 1, transform=transform)
        return ds, syn.num_classes
    if data.root is None:
        raise UserError(f"--data DIR is required for dataset {data.dataset}")
    if data.dataset == "cifar10":
        ds = CIFAR10(data.root, split or ("train" if train else "test"), transform)
        return ds, 10
    ds = ImageFolder(Path(data.root) / (split or ("train" if train else "val")), transform, data.skip_bad_images,
                     decode_min_side=max(data.scale_range) if train else None,  # JPEGs > 2x decode smaller
                     encoded=train and data.decode_on_device)
    return ds, len(ds.classes)


def crop_size(cfg: DictConfig) -> int:
    if cfg.data.crop_size:
        return cfg.data.crop_size
    if cfg.data.dataset == "synthetic":
        return cfg.data.synthetic.image_size
    return 224 if cfg.data.dataset == "imagenet" else 32
