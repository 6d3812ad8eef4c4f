"""Deterministic, resumable, distributed batching.

`GlobalBatchSampler` lays out the whole run in advance: iteration t of epoch e takes positions
[t*B, (t+1)*B) of that epoch's permutation (seeded by seed and e). Each process draws its own slice as
`accumulate` micro-batches, so one process with accumulation sees the same global batch as several
processes without it. Every sample comes with its own seed (from seed, epoch, index), which
`SeededDataset` installs before loading it: augmentation is then independent of worker count, order and
restarts, and resuming at iteration t reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from engine.errors import UserError

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) & _MASK


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless micro-batches of `(sample seed, dataset index)` for this rank, from iteration `start_iter` on."""

    def __init__(self, size: int, global_batch: int, *, accumulate: int = 1, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_iter: int = 0, shuffle: bool = True) -> None:
        parts = world_size * accumulate
        if global_batch % parts:
            raise UserError(f"batch size {global_batch} is not divisible by processes x accumulation steps "
                            f"({world_size} x {accumulate})")
        if size < global_batch:
            raise UserError(f"the training set has {size} samples, fewer than one batch of {global_batch}")
        self.size, self.global_batch, self.accumulate = size, global_batch, accumulate
        self.rank, self.seed, self.start_iter, self.shuffle = rank, seed, start_iter, shuffle
        self.micro_batch = global_batch // parts
        self.iters_per_epoch = size // global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iter
        epoch, order = -1, None
        while True:
            if iteration // self.iters_per_epoch != epoch:
                epoch = iteration // self.iters_per_epoch
                g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
                order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            base = (iteration % self.iters_per_epoch) * self.global_batch
            for m in range(self.accumulate):
                start = base + (self.rank * self.accumulate + m) * self.micro_batch
                yield [(sample_seed(self.seed, epoch, int(i)), int(i))
                       for i in order[start:start + self.micro_batch]]
            iteration += 1


class ShardSampler(Sampler[list[tuple[int, int]]]):
    """Evaluation batches: every index once, rank r taking indices r, r + world, ... (seed 0: no randomness)."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield [(0, i) for i in self.indices[start:start + self.batch_size]]


class SeededDataset(Dataset):
    """Wraps a dataset so `ds[(seed, index)]` loads `index` with torch's and Python's generators seeded."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)
