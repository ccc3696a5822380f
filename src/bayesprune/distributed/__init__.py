"""Data-parallel training with PyTorch's own engine (torch.distributed + DDP).

`fit` trains on several processes, on one machine or many, when a process group
exists: started by `torchrun` (fit initialises it from torchrun's environment), by
`setup()`, or by `launch()`, which spawns local processes. How the work is split:

- `batch_size` is the *global* batch. Every process draws the same shuffled order
  (the loader seed is shared) padded to a multiple of the world size as
  `DistributedSampler` does, and takes every world-size-th example of each global
  batch. A run on W processes therefore follows the optimisation path of a run on
  one, with the same learning rate, schedule and KL warm-up.
- The model (with the likelihood, whose parameters may be learned) is wrapped in
  `DistributedDataParallel`, which averages gradients over processes. Each process
  adds the *whole* `KL / N` to its mean NLL; averaging W identical KL gradients
  gives `KL / N` once, and averaging the W shard means gives the global batch mean:
  exactly the single-process loss `mean NLL + KL / N`. The KL is computed on the
  unwrapped model, outside DDP's forward.
- Each process draws its own local-reparameterisation noise (rank-dependent seed).
- Only rank 0 writes checkpoints; it gathers every process's RNG state into the
  file, and on resume rank 0 reads the file and broadcasts its bytes, so resuming
  needs no shared file system and reproduces the uninterrupted run exactly.

See docs/distributed.md for launch commands.
"""

from .context import (
    BACKENDS,
    DEFAULT_TIMEOUT_S,
    LOCAL,
    DistContext,
    clean_error,
    context,
    device_for,
    rank_seed,
    setup,
    torchrun_world,
)
from .launch import launch
from .sharding import batch_indices, check_batch_size, padded_length, shard

_DEFAULT_TIMEOUT_S = DEFAULT_TIMEOUT_S  # older name

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "LOCAL",
    "DistContext",
    "batch_indices",
    "check_batch_size",
    "clean_error",
    "context",
    "device_for",
    "launch",
    "padded_length",
    "rank_seed",
    "setup",
    "shard",
    "torchrun_world",
]
