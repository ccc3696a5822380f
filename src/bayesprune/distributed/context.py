"""Process groups: which process this is, how collectives run, and bounded timeouts."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

BACKENDS = ("gloo", "nccl")
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 300.0  # torch's own default (30 min) leaves a frozen run waiting
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
    timeout_s: float = DEFAULT_TIMEOUT_S,
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
