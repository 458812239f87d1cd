"""An endless, resumable stream of batches from a map-style data set, sharded over ranks.

Epoch e visits the items in the order `randperm(n, seed + e)`; rank r takes every world_size-th
item of that order, in batches of `batch_size`, dropping the incomplete tail. The position is two
integers (epoch, batches drawn in it), counted in the training process, so it is exact even when
DataLoader workers prefetch ahead, and resuming skips the drawn batches without loading them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset


class BatchStream:
    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        collate_fn: Callable[[list], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        n = len(dataset)
        self.batches_per_epoch = (n // world_size) // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"data set of {n} items is too small for batch_size {batch_size} on {world_size} process(es); "
                f"it needs at least {batch_size * world_size}"
            )
        self.epoch = 0
        self.drawn = 0  # batches drawn in the current epoch
        self._iterator = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return mine.view(self.batches_per_epoch, self.batch_size).tolist()

    def _start(self) -> None:
        batches = self._epoch_batches(self.epoch)[self.drawn :]
        loader = DataLoader(
            self.dataset, batch_sampler=batches, collate_fn=self.collate_fn, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=False,
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global
            # RNG, and a resumed run (which starts a loader mid-epoch) would shift the trajectory.
            generator=torch.Generator().manual_seed(self.seed + self.epoch),
        )
        self._iterator = iter(loader)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Any:
        if self.drawn >= self.batches_per_epoch:
            self.epoch, self.drawn, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start()
        batch = next(self._iterator)
        self.drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.drawn, self._iterator = int(state["epoch"]), int(state["drawn"]), None
