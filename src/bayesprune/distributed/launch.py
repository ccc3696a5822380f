"""Spawn local processes for a data-parallel run; one clean error from any rank."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..io import atomic_write_json
from .context import BACKENDS, DEFAULT_TIMEOUT_S, clean_error


def launch(
    fn: Callable[..., Any],
    nproc: int,
    *args: Any,
    backend: str = "gloo",
    threads: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
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
    from ..io import CheckpointError

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
        from ..io import CheckpointError

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
