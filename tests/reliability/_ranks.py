"""Process bodies for the distributed test of test_inputs.py.

Kept apart so that each spawned process imports torch and bayesprune.distributed only,
not the test module's hypothesis, scikit-learn and CLI imports.
"""

from __future__ import annotations

import time

import torch

from bayesprune import distributed as dp


def freeze_rank_one() -> int:
    """Rank 1 freezes; rank 0 waits for it in a collective."""
    ctx = dp.setup()
    if ctx.rank == 1:
        time.sleep(120)
    ctx.all_reduce(torch.zeros(1))
    return ctx.rank


def fail_on_rank_one() -> int:
    """Rank 1 meets a user error; every rank stops (raise_if_any)."""
    ctx = dp.setup()
    problem = ValueError("labels out of range; remap them") if ctx.rank == 1 else None
    ctx.raise_if_any(problem)
    return ctx.rank
