"""Safe, atomic file I/O: safetensors + JSON only, never pickle.

Every write goes to a temporary file in the destination folder and is moved into
place with `os.replace`, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

DIGEST = "__tensors_sha256__"  # key of the tensors' checksum in the header's JSON record


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, corrupt, truncated or does not fit."""


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


NEW_FILE_MODE = 0o666 & ~_read_umask()
"""The mode `open()` gives a new file; mkstemp's temporary files are private (0600)."""


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder + os.replace).

    The file gets the mode a plain `open()` would give it, not mkstemp's private 0600, so
    saved models and reports stay readable by the user's group as their other files are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of `tensors` (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_tensors(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None
) -> Path:
    """Save tensors (+ JSON-able metadata, stored in the safetensors header) atomically.

    The header also holds a SHA-256 of the tensors, checked on load, so a flipped bit
    or a partial copy is an error rather than a silently different model.
    """
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # one metadata key only: safetensors writes several in a per-process random order,
    # which would make identical saves differ byte for byte
    record = {**(metadata or {}), DIGEST: tensors_digest(flat)}
    meta = {"json": json.dumps(record, sort_keys=True)}
    return atomic_write_bytes(path, st_save(flat, metadata=meta))


def load_tensors(
    path: str | Path, raw: bytes | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a file written by `save_tensors`; a bad file raises one clear CheckpointError.

    `raw`: the file's bytes, read elsewhere (distributed resume: rank 0 reads the file
    and broadcasts it); `path` then only names the file in errors.
    """
    path = Path(path)
    if raw is None:
        if not path.is_file():
            raise CheckpointError(f"no such checkpoint file: {path}")
        raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        metadata = json.loads(header.get("__metadata__", {}).get("json", "{}"))
        expected = metadata.pop(DIGEST, None) if isinstance(metadata, dict) else None
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError, AttributeError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({err}); it cannot be loaded. Use an earlier "
            "checkpoint from the same folder, or retrain; the file was left untouched."
        ) from err
    if expected is not None and expected != tensors_digest(tensors):
        raise CheckpointError(
            f"{path} does not match its checksum (a flipped bit or a damaged copy); it cannot "
            "be trusted. Use an earlier checkpoint or a fresh copy, or retrain; the file was "
            "left untouched."
        )
    return tensors, metadata
