"""A run folder as a transaction: one lock, artefact sets published whole, a manifest each.

Why: a step writes several files that must agree (a compressed model and the
compression.json that describes it; an ONNX file and the safetensors of the same
network). Written one by one, a kill between two writes leaves a mixed set, and two
processes on one folder interleave their files.

- **Lock.** `folder_lock` takes an exclusive, non-blocking `fcntl.flock` on
  ``RUN/.lock`` (POSIX only) and writes the holder's pid into it. A second process
  fails at once with `RunFolderError` naming the folder and the pid. The kernel drops
  the lock when its process dies, so a killed run never leaves a stale lock. The lock
  is re-entrant within a process (a report runs evaluate and select-features).
- **Staging.** A `Transaction` hands out temporary names next to the final ones
  (``.NAME.tx-ID.tmp``); nothing final is touched while the step computes.
- **Commit.** The files are hashed and a journal (``manifests/SET.pending.json``:
  sizes, SHA-256, staged names, files to remove) is written atomically: that rename
  is the commit point. Then the staged files are renamed into place, files of the
  old set that the new one lacks are removed, and the manifest
  ``manifests/SET.json`` is written last; the journal is deleted.
- **Recovery.** When a process takes the lock, `recover` rolls every committed
  journal forward (the renames are idempotent) and deletes temporaries (``.*.tmp``)
  left by dead processes. A kill before the commit point leaves the old set, a kill
  after it the new one; never a mixture.
- **Reading.** `verify` checks every file of a set against its manifest (size and
  SHA-256); a set whose files exist without a matching manifest is incomplete, one
  error naming the command that rewrites it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json

MANIFEST_FORMAT = "bayesprune-manifest/1"
MANIFESTS = "manifests"
LOCK_NAME = ".lock"
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # io.atomic_write_bytes and Transaction.stage


class RunFolderError(ValueError):
    """A run folder is busy (locked by another process), incomplete, or unsafe to write."""


@dataclass(frozen=True)
class ArtefactSet:
    """The files one step publishes together.

    `files`: paths relative to the run folder; `directory`: a folder the set owns
    whole (any file in it that the new set lacks is removed on publish); `command`:
    what rewrites the set, with ``{run}`` for the folder (named in errors).
    """

    name: str
    command: str
    files: tuple[str, ...] = ()
    directory: str | None = None

    def owns(self, rel: str) -> bool:
        return rel in self.files or (
            self.directory is not None and rel.startswith(self.directory + "/")
        )

    def existing(self, folder: Path) -> list[str]:
        """Files of this set present in `folder` now (temporaries excluded)."""
        found = [rel for rel in self.files if (folder / rel).is_file()]
        if self.directory is not None and (folder / self.directory).is_dir():
            found += [
                f"{self.directory}/{p.name}"
                for p in sorted((folder / self.directory).iterdir())
                if p.is_file() and not _TEMPORARY.match(p.name)
            ]
        return found


# -- the lock ----------------------------------------------------------------------------
_HELD: dict[Path, tuple[int, int, int]] = {}  # folder → (fd, depth, pid that opened fd)
_HELD_GUARD = threading.Lock()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "an unknown process"


def _open_lock(folder: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(folder / LOCK_NAME, flags, 0o666)
    except OSError as err:
        raise RunFolderError(f"cannot lock the run folder {folder}: {err.strerror}") from err


@contextmanager
def folder_lock(
    folder: str | Path, on_acquire: Callable[[Path], None] | None = None
) -> Iterator[None]:
    """Hold the run folder's lock for the block; fail at once if another process holds it.

    `on_acquire(folder)` runs when this process takes the lock (not when it re-enters).
    """
    folder = Path(folder)
    key = folder.resolve()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[2] == os.getpid():
            _HELD[key] = (held[0], held[1] + 1, held[2])
            fd = None
        else:
            fd = _open_lock(folder)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                who = _holder(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunFolderError(f"cannot lock the run folder {folder}: {err}") from err
                raise RunFolderError(
                    f"{folder} is in use by another bayesprune process ({who}); wait for it "
                    "to finish, or use another run folder"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = (fd, 1, os.getpid())
    try:
        if fd is not None and on_acquire is not None:
            on_acquire(folder)
        yield
    finally:
        with _HELD_GUARD:
            lock_fd, depth, pid = _HELD[key]
            if depth > 1:
                _HELD[key] = (lock_fd, depth - 1, pid)
            else:
                del _HELD[key]
                os.close(lock_fd)  # closing the last descriptor releases the flock


# -- hashing and manifests -------------------------------------------------------------
def file_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file (read in blocks)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def manifest_path(folder: Path, name: str) -> Path:
    return folder / MANIFESTS / f"{name}.json"


def _journal_path(folder: Path, name: str) -> Path:
    return folder / MANIFESTS / f"{name}.pending.json"


def _fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a kill does not need it; a power cut does)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _incomplete(folder: Path, aset: ArtefactSet, why: str) -> RunFolderError:
    command = aset.command.format(run=folder)
    return RunFolderError(
        f"the {aset.name} outputs in {folder} are incomplete ({why}); rerun `bayesprune {command}`"
    )


def verify(folder: Path, aset: ArtefactSet) -> dict[str, Any] | None:
    """The manifest of a complete set; None if the set is absent; else `RunFolderError`."""
    path = manifest_path(folder, aset.name)
    if not path.is_file():
        present = aset.existing(folder)
        if present:
            raise _incomplete(folder, aset, f"{present[0]} has no manifest")
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and manifest.get("set") == aset.name
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok or not isinstance(files, dict):
        raise _incomplete(folder, aset, f"{path} is not a valid manifest")
    for rel, want in files.items():
        file = folder / rel
        if not aset.owns(rel) or not file.is_file() or file.is_symlink():
            raise _incomplete(folder, aset, f"{rel} is missing")
        if file.stat().st_size != want.get("size") or file_record(file) != want:
            raise _incomplete(folder, aset, f"{rel} does not match its manifest")
    return manifest


# -- writing a set -----------------------------------------------------------------------
def _safe_parent(folder: Path, rel: str) -> Path:
    """The folder `rel` goes in, created; a planted symlink on the way is refused."""
    parent = folder
    for part in Path(rel).parts[:-1]:
        parent = parent / part
        if parent.is_symlink():
            raise RunFolderError(f"{parent} is a symbolic link; refusing to write through it")
        parent.mkdir(exist_ok=True)
    return parent


class Transaction:
    """Stage the files of one artefact set; `commit` publishes them together (see module)."""

    def __init__(self, folder: Path, aset: ArtefactSet) -> None:
        self.folder = folder
        self.aset = aset
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._staged: dict[str, Path] = {}

    def stage(self, rel: str) -> Path:
        """The temporary path to write `rel` (relative to the run folder) to."""
        if not self.aset.owns(rel):
            raise ValueError(f"{rel} is not part of the {self.aset.name} outputs")
        parent = _safe_parent(self.folder, rel)
        path = parent / f".{Path(rel).name}.tx-{self.id}.tmp"
        self._staged[rel] = path
        return path

    def write_bytes(self, rel: str, data: bytes) -> Path:
        return atomic_write_bytes(self.stage(rel), data)

    def write_json(self, rel: str, obj: Any) -> Path:
        return atomic_write_json(self.stage(rel), obj)

    def discard(self) -> None:
        for path in self._staged.values():
            path.unlink(missing_ok=True)

    def commit(self) -> dict[str, Any]:
        """Write the journal (the commit point), rename into place, write the manifest."""
        missing = [rel for rel, path in self._staged.items() if not path.is_file()]
        if missing:
            raise RuntimeError(f"staged {missing} but never wrote them")
        files = {rel: file_record(path) for rel, path in sorted(self._staged.items())}
        old = self.aset.existing(self.folder)
        journal = {
            "format": MANIFEST_FORMAT,
            "set": self.aset.name,
            "files": files,
            "staged": {rel: str(p.relative_to(self.folder)) for rel, p in self._staged.items()},
            "remove": sorted(set(old) - set(files)),
        }
        manifests = _safe_parent(self.folder, f"{MANIFESTS}/x")
        atomic_write_json(_journal_path(self.folder, self.aset.name), journal)
        _fsync_dir(manifests)
        return _roll_forward(self.folder, self.aset.name, journal)


def _roll_forward(folder: Path, name: str, journal: dict[str, Any]) -> dict[str, Any]:
    """Finish a committed journal: renames, removals, manifest, journal deleted."""
    for rel, staged in journal["staged"].items():
        source = folder / staged
        if source.is_file():
            os.replace(source, folder / rel)
    for rel in journal["remove"]:
        (folder / rel).unlink(missing_ok=True)
    for parent in {(folder / rel).parent for rel in journal["files"]}:
        _fsync_dir(parent)
    manifest = {"format": MANIFEST_FORMAT, "set": name, "files": journal["files"]}
    atomic_write_json(manifest_path(folder, name), manifest)
    _journal_path(folder, name).unlink()
    return manifest


def recover(folder: Path) -> None:
    """Under the lock: finish committed journals, then delete dead processes' temporaries."""
    manifests = folder / MANIFESTS
    if manifests.is_dir():
        for journal_file in sorted(manifests.glob("*.pending.json")):
            name = journal_file.name.removesuffix(".pending.json")
            try:
                journal = json.loads(journal_file.read_text())
                valid = journal["set"] == name and isinstance(journal["staged"], dict)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                valid = False
            if not valid:  # cannot happen through a kill: the journal is written atomically
                journal_file.unlink()
                continue
            _roll_forward(folder, name, journal)
    for root, dirs, names in os.walk(folder):
        for entry in names:
            if _TEMPORARY.match(entry):
                Path(root, entry).unlink(missing_ok=True)
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
