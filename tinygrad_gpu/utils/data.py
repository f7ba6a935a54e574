"""Splitting a data set between the processes of a data-parallel job."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np


def _count(dataset: Any) -> int:
    if isinstance(dataset, (int, np.integer)):
        count = int(dataset)
    else:
        try:
            count = len(dataset)
        except TypeError:
            raise TypeError(f"DistributedSampler: expected a sized data set or a number of samples, "
                            f"got {type(dataset).__name__}") from None
    if count < 0:
        raise ValueError(f"DistributedSampler: a data set cannot have {count} samples")
    return count


def shard(indices: Any, rank: int, world_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
          drop_last: bool = False) -> np.ndarray:
    """This rank's share of `indices` for one epoch: shuffled alike on every rank (seed + epoch), then dealt.

    Without drop_last the list is padded with its first entries to a multiple of world_size, so every
    rank gets the same number of samples (a few repeat); with drop_last the tail is dropped instead and
    the shares are disjoint.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise ValueError(f"shard: indices must be one-dimensional, got shape {indices.shape}")
    if not (isinstance(world_size, (int, np.integer)) and world_size >= 1):
        raise ValueError(f"shard: world_size must be a positive integer, got {world_size!r}")
    if not (isinstance(rank, (int, np.integer)) and 0 <= rank < world_size):
        raise ValueError(f"shard: rank must be in 0..{world_size - 1}, got {rank!r}")
    if shuffle:
        indices = indices[np.random.default_rng([int(seed), int(epoch)]).permutation(len(indices))]
    if drop_last:
        indices = indices[:len(indices) - len(indices) % world_size]
    else:
        per_rank = math.ceil(len(indices) / world_size) if len(indices) else 0
        missing = per_rank * world_size - len(indices)
        if missing:
            indices = np.concatenate([indices, np.resize(indices, missing)])
    return indices[rank::world_size]


class DistributedSampler:
    """Indices of this rank's share of a data set, reshuffled each epoch (call set_epoch); PyTorch's name.

    `num_replicas` and `rank` default to the process group's world size and rank.
    """

    def __init__(self, dataset: Any, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        from .. import distributed
        self.total = _count(dataset)
        self.num_replicas = distributed.get_world_size() if num_replicas is None else num_replicas
        self.rank = distributed.get_rank() if rank is None else rank
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        shard(np.arange(0), self.rank, self.num_replicas)  # validates rank and num_replicas now

    def set_epoch(self, epoch: int) -> None:
        """Use epoch's shuffle for the next iteration (the same on every rank)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an array."""
        return shard(np.arange(self.total), self.rank, self.num_replicas, self.seed, self.epoch,
                     self.shuffle, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.drop_last:
            return self.total // self.num_replicas
        return math.ceil(self.total / self.num_replicas)
