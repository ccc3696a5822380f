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

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

from .io import atomic_write_json

BACKENDS = ("gloo", "nccl")
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_DEFAULT_TIMEOUT_S = 300.0  # torch's own default (30 min) leaves a frozen run waiting
_TIMEOUT_HINT = (
    "a collective timed out waiting for the other processes: one of them froze, died or is "
    "far slower (check its output); raise train.timeout_s if it is only slow"
)


def clean_error(err: BaseException) -> BaseException:
    """A collective's raw backend error as one clear error (TimeoutError / ConnectionError).

    gloo and NCCL report a frozen or dead peer as a RuntimeError whose text is a page
    of backend detail; the CLI shows the one line this returns instead.
    """
    if isinstance(err, TimeoutError | ConnectionError) or not isinstance(err, RuntimeError):
        return err
    text = str(err).lower()
    if "timed out" in text or "timeout" in text:
        return TimeoutError(_TIMEOUT_HINT)
    if "connection" in text or "peer" in text or "broken pipe" in text:
        return ConnectionError(
            "lost contact with another process of the group (it crashed or was killed); its "
            "own output names the problem"
        )
    return err


def _collective(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RuntimeError as err:
        clean = clean_error(err)
        if clean is err:
            raise
        raise clean from err


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group; every collective is a no-op alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where collectives run: "cpu" for gloo, the GPU for nccl

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """Sum (or max) of `t` over all processes, returned on `t`'s device."""
        if not self.active:
            return t
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        buf = t.detach().to(self.comm_device).clone()
        _collective(dist.all_reduce, buf, op=ops[op])
        return buf.to(t.device)

    def all_gather(self, t: Tensor) -> Tensor:
        """`t` of every process stacked along a new first axis (rank order)."""
        if not self.active:
            return t.unsqueeze(0)
        buf = t.detach().to(self.comm_device).contiguous()
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        _collective(dist.all_gather, parts, buf)
        return torch.stack(parts).to(t.device)

    def broadcast_bytes(self, data: bytes) -> bytes:
        """Rank 0's `data` on every process (the others' argument is ignored)."""
        if not self.active:
            return data
        size = torch.tensor([len(data) if self.is_main else 0], dtype=torch.int64)
        size = self._broadcast(size)
        payload = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if self.is_main and data
            else torch.zeros(int(size), dtype=torch.uint8)
        )
        return self._broadcast(payload).numpy().tobytes() if int(size) else b""

    def _broadcast(self, t: Tensor) -> Tensor:
        buf = t.to(self.comm_device)
        _collective(dist.broadcast, buf, src=0)
        return buf.cpu()

    def raise_if_any(self, problem: Exception | None) -> None:
        """Raise on every process if any process met a problem, so that none waits forever.

        The process that met it raises its own error; the others raise the same type
        naming that process. One collective per call (a max of one integer).
        """
        if not self.active:
            if problem is not None:
                raise problem
            return
        code = 0 if problem is None else (2 if isinstance(problem, FloatingPointError) else 1)
        mine = code * self.world_size + self.rank if code else -1
        worst = int(self.all_reduce(torch.tensor([mine], dtype=torch.int64), op="max"))
        if problem is not None:
            raise problem
        if worst >= 0:
            kind = FloatingPointError if worst // self.world_size == 2 else ValueError
            raise kind(
                f"training stopped: process {worst % self.world_size} of {self.world_size} met "
                "an error; its own message (in its output) names the problem and the fix"
            )

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` in DistributedDataParallel when there are several processes."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def noise_seed(self, seed: int) -> int:
        """Seed of this process's sampling noise: `seed` on rank 0, a derived one elsewhere."""
        return rank_seed(seed, self.rank)


LOCAL = DistContext()


def rank_seed(seed: int, rank: int, *salt: int) -> int:
    """Independent seed per (seed, rank, ...); rank 0 with no salt keeps `seed` itself."""
    if rank == 0 and not salt:
        return seed
    entropy = [seed % 2**64, rank, *salt]  # SeedSequence takes non-negative integers
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def torchrun_world() -> int:
    """WORLD_SIZE when the environment of `torchrun` (env:// rendezvous) is present, else 0."""
    if not all(k in os.environ for k in _TORCHRUN_ENV):
        return 0
    return int(os.environ["WORLD_SIZE"])


def _backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"


def setup(
    backend: str | None = None,
    device: str | torch.device = "cpu",
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> DistContext:
    """Initialise the process group from torchrun's environment (env://) if needed.

    `backend` None picks "nccl" for CUDA and "gloo" otherwise. Calling it when a
    group exists only reports where this process stands.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; install a build with it")
    if not dist.is_initialized():
        if not torchrun_world():
            raise ValueError(
                "no process group and no torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, "
                "MASTER_PORT): start the script with `torchrun --nproc-per-node N script.py`, "
                "or run it through bayesprune.distributed.launch(fn, nproc)"
            )
        backend = backend or _backend_for(torch.device(device))
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return _current(torch.device(device))


def _current(device: torch.device) -> DistContext:
    world = dist.get_world_size()
    if world == 1:
        return LOCAL
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    nccl = dist.get_backend() == "nccl"
    comm = str(_resolve_device(device, local)) if nccl else "cpu"
    return DistContext(dist.get_rank(), world, local, comm)


def context(distributed: bool | None, device: str | torch.device = "cpu") -> DistContext:
    """The context `fit` trains in.

    `distributed`: None = data-parallel when a process group exists or torchrun
    started this process with more than one process; True = require it; False =
    train this process alone even inside a group.
    """
    if distributed not in (None, True, False):
        raise ValueError(f"distributed must be None, True or False, got {distributed!r}")
    if distributed is False:
        return LOCAL
    available = dist.is_available() and (dist.is_initialized() or torchrun_world() > 1)
    if not available:
        if distributed:
            raise ValueError(
                "distributed=True but this process belongs to no process group: launch with "
                "`torchrun --nproc-per-node N script.py` or bayesprune.distributed.launch(fn, N)"
            )
        return LOCAL
    return setup(device=device)


def _resolve_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def device_for(device: str | torch.device, ctx: DistContext) -> str | torch.device:
    """The device of this process: with several, a bare "cuda" means its local rank's GPU."""
    return _resolve_device(torch.device(device), ctx.local_rank) if ctx.active else device


# -------------------------------------------------------------------------------------
# how the data are split
# -------------------------------------------------------------------------------------
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


# -------------------------------------------------------------------------------------
# launching local processes
# -------------------------------------------------------------------------------------
def launch(
    fn: Callable[..., Any],
    nproc: int,
    *args: Any,
    backend: str = "gloo",
    threads: int | None = None,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> list[Any]:
    """Run `fn(*args)` in `nproc` processes on this machine, joined in one process group.

    For one machine without torchrun (scripts, tests, `bayesprune train --nproc`). `fn` must
    be importable (a module-level function); its return value must be JSON-able and
    comes back as a list, one entry per rank. `threads` per process defaults to the
    machine's cores divided by `nproc`. `nproc=1` runs `fn` here, without a group.
    Several machines: use torchrun (docs/distributed.md).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    if nproc == 1:
        return [fn(*args)]
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="bayesprune-ddp-") as folder:
        try:
            mp.start_processes(
                _launched,
                args=(nproc, fn, args, backend, threads, folder, timeout_s),
                nprocs=nproc,
                join=True,
                start_method="spawn",
            )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            raise _first_error(Path(folder), nproc) from err
        return [
            json.loads((Path(folder) / f"result-{rank}.json").read_text()) for rank in range(nproc)
        ]


# errors a process may hand back to `launch` by name (anything else comes back a RuntimeError)
_RAISABLE: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        ValueError,
        TypeError,
        KeyError,
        FloatingPointError,
        TimeoutError,
        ConnectionError,
        FileNotFoundError,
        PermissionError,
        OSError,
        RuntimeError,
    )
}


def _record_error(folder: str, rank: int, err: BaseException) -> None:
    """Leave this process's error (type, one-line message) for `launch` to raise."""
    from .io import CheckpointError

    kind = type(err)
    name = "CheckpointError" if isinstance(err, CheckpointError) else kind.__name__
    if kind.__name__ == "ConfigError":
        name = "ConfigError"
    message = " ".join(str(err).split()) or kind.__name__
    secondary = isinstance(err, TimeoutError | ConnectionError) or message.startswith(
        "training stopped: process"
    )
    record = {"type": name, "message": message, "secondary": secondary}
    atomic_write_json(Path(folder) / f"error-{rank}.json", record)


def _first_error(folder: Path, nproc: int) -> BaseException:
    """One clean error for the whole group: the first process's own problem, else a timeout."""
    records = []
    for rank in range(nproc):
        path = folder / f"error-{rank}.json"
        if path.is_file():
            records.append((rank, json.loads(path.read_text())))
    if not records:
        return RuntimeError(
            f"a process of the {nproc} died without an error message (killed, or out of "
            "memory); rerun with --nproc 1 to see the problem"
        )
    rank, record = min(records, key=lambda r: (r[1]["secondary"], r[0]))
    kind = _raisable(record["type"])
    return kind(f"process {rank} of {nproc}: {record['message']}")


def _raisable(name: str) -> type[BaseException]:
    if name == "CheckpointError":
        from .io import CheckpointError

        return CheckpointError
    if name == "ConfigError":
        from .app.schema import ConfigError

        return ConfigError
    return _RAISABLE.get(name, RuntimeError)


def _launched(
    rank: int,
    nproc: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    backend: str,
    threads: int,
    folder: str,
    timeout_s: float,
) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc)
    )
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            backend,
            init_method=f"file://{Path(folder) / 'rendezvous'}",
            rank=rank,
            world_size=nproc,
            timeout=timedelta(seconds=timeout_s),
        )
        result = fn(*args)
    except Exception as err:
        clean = clean_error(err)
        _record_error(folder, rank, clean)
        _destroy_quietly()
        if clean is err:
            raise
        raise clean from err
    try:
        atomic_write_json(Path(folder) / f"result-{rank}.json", result)
    except TypeError as err:
        raise TypeError(
            f"launch: {getattr(fn, '__name__', fn)} returned {type(result).__name__}; "
            "return JSON-able values (numbers, strings, lists, dicts) or write files"
        ) from err
    finally:
        _destroy_quietly()


def _destroy_quietly() -> None:
    """Leave the group; after a peer froze or died this may itself fail, which adds nothing."""
    with contextlib.suppress(Exception):  # the process is ending with its own error already
        dist.destroy_process_group()
