"""How the data are split over processes: every process draws the same padded order."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset


def check_batch_size(batch_size: int, world_size: int) -> None:
    if world_size > 1 and batch_size % world_size:
        lo = batch_size - batch_size % world_size
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must be divisible by the "
            f"{world_size} processes; use {lo or world_size} or {lo + world_size}"
        )


def padded_length(n: int, world_size: int) -> int:
    """Examples per epoch over all processes: n rounded up to a multiple of the world size."""
    return n + (-n % world_size)


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Tensor]:
    """Indices of this process's part of each global batch.

    The order is drawn from `generator`, identical on every process. With several
    processes it is padded by wrapping around (at most world_size − 1 repeats per
    epoch, as `DistributedSampler`), and process r takes positions r, r + W, ... of
    each global batch: equal shares, and together exactly the global batch.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    total = padded_length(n, world_size)
    if total > n:
        order = order.repeat(-(-total // n))[:total]
    for start in range(0, total, batch_size):
        yield order[start : start + batch_size][rank::world_size]


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Examples rank, rank + W, ... of `dataset` (no padding: for evaluation sums)."""
    if world_size == 1:
        return dataset
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[rank::world_size] for t in dataset.tensors))
    return Subset(dataset, range(rank, len(dataset), world_size))  # type: ignore[arg-type]
