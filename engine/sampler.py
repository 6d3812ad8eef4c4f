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
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.errors import UserError

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) & _MASK


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless micro-batches of `(sample seed, dataset index)` for this rank, from iteration `start_iter` on.

    With `groups` (a group id per sample, e.g. landscape / portrait images) every global batch is drawn from
    one group (detectron2's aspect-ratio grouping: less padding in a batch). The epoch's batches are then the
    consecutive runs of each group in the epoch's permutation, in an order shuffled by the same seed: still a
    function of (seed, epoch), so resuming and splitting over processes stay exact.
    """

    def __init__(self, size: int, global_batch: int, *, accumulate: int = 1, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_iter: int = 0, shuffle: bool = True,
                 groups: Sequence[int] | None = None) -> None:
        parts = world_size * accumulate
        if global_batch % parts:
            raise UserError(f"batch size {global_batch} is not divisible by processes x accumulation steps "
                            f"({world_size} x {accumulate})")
        if size < global_batch:
            raise UserError(f"the training set has {size} samples, fewer than one batch of {global_batch}")
        self.size, self.global_batch, self.accumulate = size, global_batch, accumulate
        self.rank, self.seed, self.start_iter, self.shuffle = rank, seed, start_iter, shuffle
        self.micro_batch = global_batch // parts
        self.groups = None if groups is None else torch.as_tensor(list(groups), dtype=torch.int64)
        if self.groups is None:
            self.iters_per_epoch = size // global_batch
        else:
            if len(self.groups) != size:
                raise ValueError(f"{len(self.groups)} group ids for {size} samples")
            self.iters_per_epoch = int(sum(int(n) // global_batch for n in torch.bincount(self.groups)))
            if self.iters_per_epoch == 0:
                raise UserError(f"no aspect-ratio group has {global_batch} images for one batch; set "
                                "data.aspect_ratio_grouping=false")

    def _epoch(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's global batches of dataset indices, in order."""
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        if self.groups is None:
            return list(order[: self.iters_per_epoch * self.global_batch].split(self.global_batch))
        batches = []
        for group in torch.unique(self.groups):
            members = order[self.groups[order] == group]
            full = len(members) // self.global_batch * self.global_batch
            batches += list(members[:full].split(self.global_batch))
        shuffled = torch.randperm(len(batches), generator=g) if self.shuffle else torch.arange(len(batches))
        return [batches[int(i)] for i in shuffled]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iter
        epoch, batches = -1, []
        while True:
            if iteration // self.iters_per_epoch != epoch:
                epoch = iteration // self.iters_per_epoch
                batches = self._epoch(epoch)
            batch = batches[iteration % self.iters_per_epoch]
            for m in range(self.accumulate):
                start = (self.rank * self.accumulate + m) * self.micro_batch
                yield [(sample_seed(self.seed, epoch, int(i)), int(i)) for i in batch[start:start + self.micro_batch]]
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
    """Wraps a dataset so `ds[(seed, index)]` loads `index` with torch's CPU generator and Python's seeded.

    Only the CPU generator is seeded (what the transforms draw from, and what `fork_rng(devices=[])` restores):
    `torch.manual_seed` would also queue a seed for every CUDA device, which on a CUDA build of torch without an
    initialised GPU formats a Python stack trace each call (~0.14 ms, more than decoding a small image), and in
    the main process (no loader workers) would leave the CUDA generators reseeded by the last sample."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


def seeded_loader(dataset: Any, batch_sampler: Sampler, workers: int, collate_fn: Any, *, pin_memory: bool = False,
                  persistent: bool = False) -> DataLoader:
    """The one way the tasks load data: `dataset` wrapped in `SeededDataset` (each sample's randomness from its
    own seed), batches from `batch_sampler`, `workers` processes, and no draw from the global
    random generator (an own `torch.Generator`), so that the training stream does not depend on loading."""
    return DataLoader(SeededDataset(dataset), batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=pin_memory, persistent_workers=persistent and workers > 0,
                      generator=torch.Generator())
