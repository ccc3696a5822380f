"""Run a block with a given number of CPU threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def limited_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op CPU threads (None: leave torch's setting), then restore.

    Small networks train many times faster on one thread when other processes share
    the cores: torch's thread pool then spends its time waiting for busy cores.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
