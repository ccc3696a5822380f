"""The run folder as a transaction: kills at every write and rename, the lock, overrides.

Fault injection: a forked child runs one step (train, compress, restore,
select-features, export) with `os.open` / `os.fsync` / `os.replace` / `os.rename` / `os.unlink` /
`os.mkdir` wrapped; at the k-th call it dies with `os._exit` (at an fsync it first
tears the file to half its size, as a kill mid-write would). A counting run gives the
number of such calls N; every k in 1..N is then killed in turn, and the parent checks
that, once the folder is opened again, each artefact set is exactly the old one or
exactly the new one (its manifest verifies, and its records equal the reference
run's), no temporaries are left, and the step reruns to the reference result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from bayesprune.app import Run, parse_config
from bayesprune.app.folder import ARTEFACTS, lock_folder
from bayesprune.app.steps import (
    compress_run,
    export_run,
    restore_run,
    select_features,
    train_run,
)
from bayesprune.app.transaction import RunFolderError
from bayesprune.cli import main
from bayesprune.compress import load_model, saved_metadata

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork-based fault injection")

RAW = {
    "data": {"name": "digits", "limit": 160, "test_limit": 40, "val_fraction": 0.2},
    "model": {"kwargs": {"hidden": [6]}, "family": "gaussian"},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "keep_checkpoints": 1},
    "compress": {"rule": "global", "sparsity": 0.5},
    "evaluate": {"samples": 2},
}
KILLED = 86  # exit status of a child killed by the hook
WRAPPED = ("open", "fsync", "replace", "rename", "unlink", "mkdir")


def _kill_hook(k: int, log: list[str]) -> None:
    """Wrap the os calls that write or rename; die before the k-th one (k=0: never)."""
    originals = {name: getattr(os, name) for name in WRAPPED}

    def wrap(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "open" and not (args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return originals[name](*args, **kwargs)  # a read opens nothing to kill
            log.append(f"{name} {Path(str(args[0])).name if name != 'fsync' else ''}")
            if len(log) == k:
                info = os.fstat(args[0]) if name == "fsync" else None
                if info is not None and stat.S_ISREG(info.st_mode):  # a torn write
                    os.ftruncate(args[0], info.st_size // 2)
                os._exit(KILLED)
            return originals[name](*args, **kwargs)

        return call

    for name in WRAPPED:
        setattr(os, name, wrap(name))


def _in_child(step: Callable[[], Any], k: int, record: Path | None = None) -> int:
    """Run `step` in a forked child killed at call k; its exit status (0 if it finished)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            log: list[str] = []
            _kill_hook(k, log)
            step()
            if record is not None:
                record.write_text(json.dumps(log))
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _temporaries(folder: Path) -> list[str]:
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or p.name.endswith(".pending.json")
    ]


def _state(folder: Path) -> dict[str, Any]:
    """Open the folder under its lock (recovery runs) and read every set's manifest."""
    folder.mkdir(exist_ok=True)
    with lock_folder(folder):
        pass
    assert not _temporaries(folder), _temporaries(folder)
    if not (folder / "config.yaml").is_file():  # killed before train wrote anything
        assert not (folder / "model.safetensors").exists()
        return {}
    run = Run.open(folder)
    return {name: _contents(folder, run.artefacts(name)) for name in ARTEFACTS}


def _contents(folder: Path, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A verified set by its files' SHA-256; metrics.json and restore.json without their
    wall-clock times (per-epoch and per-candidate seconds, the provenance's training
    time and finishing date)."""
    if manifest is None:
        return None
    out: dict[str, Any] = {rel: r["sha256"] for rel, r in manifest["files"].items()}
    if "metrics.json" in out:
        metrics = json.loads((folder / "metrics.json").read_text())
        for epoch in metrics["history"]:
            epoch.pop("seconds", None)
        for clock in ("training_seconds", "finished"):
            metrics.get("provenance", {}).pop(clock, None)
        out["metrics.json"] = metrics
    if "restored/restore.json" in out:  # each candidate's seconds
        restore = json.loads((folder / "restored/restore.json").read_text())
        for candidate in restore["candidates"].values():
            candidate.pop("seconds", None)
        out["restored/restore.json"] = restore
    return out


def _check_consistent(folder: Path) -> None:
    """Each model agrees with the JSON published with it."""
    if not (folder / "config.yaml").is_file():
        return
    run = Run.open(folder)
    if run.artefacts("train"):
        metrics = run.read_json("metrics.json")
        assert metrics["size"]["parameters"] == sum(
            p.numel() for p in run.load_model().parameters()
        )
    if run.artefacts("compress"):
        report = run.read_json("compressed/compression.json")
        model = run.load_model("compressed")
        widths = [m.weight_mu.shape[0] for m in model if hasattr(m, "weight_mu")]
        assert widths == report["totals"]["architecture_after"][1:]
    if run.artefacts("export"):
        out = run.read_json("export/export.json")
        assert saved_metadata(folder / "export/model.safetensors")["source"] == out["model"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A trained, compressed, feature-selected run exported from the trained model: the
    'old' state every kill starts from."""
    folder = tmp_path_factory.mktemp("base") / "run"
    torch.manual_seed(0)
    train_run(parse_config(RAW), folder)
    run = Run.open(folder)
    compress_run(run)
    other = parse_config({**RAW, "features": {"threshold": 0.9}})
    select_features(run.with_config(other))
    export_run(run, which="trained")
    return folder


STEPS: dict[str, Callable[[Path], Any]] = {
    "train": lambda f: train_run(parse_config(RAW), f),
    "compress": lambda f: compress_run(Run.open(f), {"sparsity": 0.8}),
    "restore": lambda f: restore_run(Run.open(f), {"method": "temperature"}),
    "select-features": lambda f: select_features(Run.open(f)),
    "export": lambda f: export_run(Run.open(f)),  # the compressed model: another model
}
SET_OF = {"train": "train", "compress": "compress", "restore": "restore",
          "select-features": "features", "export": "export"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("step", list(STEPS))
def test_a_kill_at_any_write_or_rename_leaves_the_old_or_the_new_set(step, base, tmp_path):
    start = tmp_path / "empty" if step == "train" else base
    if step == "train":
        start.mkdir()
    # the reference run: counts the calls and gives the new state
    new_folder = tmp_path / "new" / "run"  # one folder name: reports carry it
    shutil.copytree(start, new_folder)
    calls_file = tmp_path / "calls.json"
    assert _in_child(lambda: STEPS[step](new_folder), 0, calls_file) == 0
    calls = json.loads(calls_file.read_text())
    old, new = _state(start), _state(new_folder)
    name = SET_OF[step]
    assert new[name] is not None and new[name] != old.get(name)
    _check_consistent(new_folder)

    outcomes = {"old": 0, "new": 0}
    for k in range(1, len(calls) + 1):
        folder = tmp_path / f"k{k}" / "run"
        shutil.copytree(start, folder)
        assert _in_child(lambda f=folder: STEPS[step](f), k) == KILLED, (k, calls[k - 1])
        state = _state(folder)
        got = state.get(name)
        assert got in (old.get(name), new[name]), f"kill at call {k} ({calls[k - 1]})"
        outcomes["new" if got == new[name] else "old"] += 1
        for other, manifest in state.items():  # the other sets are untouched
            assert other == name or manifest == old.get(other), (k, other)
        _check_consistent(folder)
        if k % 4 == 0 or k == len(calls):  # rerunning ends at the reference result
            assert _in_child(lambda f=folder: STEPS[step](f), 0) == 0
            assert _state(folder)[name] == new[name], f"rerun after a kill at call {k}"
        shutil.rmtree(folder.parent)
    assert outcomes["old"] and outcomes["new"], outcomes
    print(f"{step}: {len(calls)} kill points, {outcomes}")


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, [*args, "--threads", "1"])


def test_a_second_process_on_a_locked_folder_fails_at_once(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child holds the lock, then sleeps
        with lock_folder(folder):
            os.write(ready_w, b"1")
            time.sleep(60)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        before = (folder / "compressed/compression.json").read_bytes()
        started = time.monotonic()
        result = _invoke("compress", str(folder), "--quiet")
        assert time.monotonic() - started < 5
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"{folder} is in use by another bayesprune process (pid {pid})" in result.output
        assert (folder / "compressed/compression.json").read_bytes() == before
    finally:
        os.kill(pid, signal.SIGKILL)  # a dead holder: the kernel drops its lock
        os.waitpid(pid, 0)
    assert _invoke("compress", str(folder), "--quiet").exit_code == 0


def test_the_lock_is_reentrant_in_one_process(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    with lock_folder(folder), lock_folder(folder):
        assert select_features(Run.open(folder))["n_features"] == 64
    assert int((folder / ".lock").read_text()) == os.getpid()


def test_a_failing_compress_override_leaves_config_and_outputs_unchanged(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    config = (folder / "config.yaml").read_bytes()
    compressed = Run.open(folder).artefacts("compress")
    result = _invoke("compress", str(folder), "--rule", "target_size", "--k", "2", "--quiet")
    assert result.exit_code == 1 and "no layer has unit inclusion" in result.output
    assert (folder / "config.yaml").read_bytes() == config
    assert Run.open(folder).artefacts("compress") == compressed
    result = _invoke("compress", str(folder), "--sparsity", "0.7", "--quiet")
    assert result.exit_code == 0, result.output
    assert (folder / "config.yaml").read_bytes() == config  # overrides are not persisted
    used = Run.open(folder).read_json("compressed/compression.json")["extra"]["options"]
    assert used["sparsity"] == 0.7 and used["rule"] == "global"
    assert _invoke("compress", str(folder), "--quiet").exit_code == 0  # the config's again
    used = Run.open(folder).read_json("compressed/compression.json")["extra"]["options"]
    assert used["sparsity"] == 0.5


def test_an_error_while_publishing_discards_the_staged_files(base, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    old = Run.open(folder).artefacts("compress")

    def broken(_report: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bayesprune.app.steps.compress.report_markdown", broken)
    with pytest.raises(OSError, match="No space left"):
        compress_run(Run.open(folder), {"sparsity": 0.9})
    assert Run.open(folder).artefacts("compress") == old
    assert not _temporaries(folder)


def test_a_changed_or_unmanifested_set_is_one_clear_error(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    model = folder / "compressed" / "model.safetensors"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in a weight: still a loadable file
    model.write_bytes(bytes(raw))
    with pytest.raises(RunFolderError, match="does not match its manifest.*rerun `bayesprune "
                       "compress"):  # fmt: skip
        Run.open(folder).load_model("compressed")
    result = _invoke("evaluate", str(folder))
    assert result.exit_code == 1 and "rerun `bayesprune compress" in result.output
    assert "Traceback" not in result.output
    (folder / "manifests" / "export.json").unlink()  # a folder from before manifests
    with pytest.raises(RunFolderError, match="has no manifest.*rerun `bayesprune export"):
        Run.open(folder).read_json("export/export.json")
    assert _invoke("compress", str(folder), "--quiet").exit_code == 0
    assert _invoke("export", str(folder)).exit_code == 0
    assert Run.open(folder).load_model("compressed") is not None


def test_stale_temporaries_are_removed_when_the_folder_is_opened(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    stale = [
        folder / ".metrics.json.abc123.tmp",
        folder / "compressed" / ".model.safetensors.tx-999-00ff.tmp",
        folder / "checkpoints" / ".epoch-0002.safetensors.x.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half")
    keep = folder / "notes.tmp"  # not one of ours: not hidden
    keep.write_text("mine")
    select_features(Run.open(folder))
    assert not any(p.exists() for p in stale) and keep.exists()


def test_log_is_never_appended_through_a_planted_symlink(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    (folder / "log.txt").unlink()
    (folder / "log.txt").symlink_to(target)
    result = _invoke("select-features", str(folder))
    assert result.exit_code == 1 and "log.txt" in result.output
    assert "Traceback" not in result.output
    assert target.read_text() == "precious\n"


def test_a_set_folder_planted_as_a_symlink_is_refused(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(folder / "export")
    (folder / "export").symlink_to(elsewhere)
    with pytest.raises(RunFolderError, match="symbolic link"):
        export_run(Run.open(folder))
    assert not list(elsewhere.iterdir())


def test_config_yaml_is_written_only_by_train(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    config = (folder / "config.yaml").read_bytes()
    for args in (["compress", str(folder), "--rule", "layer", "--quiet"],
                 ["evaluate", str(folder)], ["export", str(folder), "--no-onnx"],
                 ["report", str(folder)]):  # fmt: skip
        assert _invoke(*args).exit_code == 0, args
    assert (folder / "config.yaml").read_bytes() == config
    assert yaml.safe_load(config)["compress"]["rule"] == "global"
    # export without ONNX removes the old model.onnx: no file of another model stays
    assert not (folder / "export" / "model.onnx").exists()
    assert load_model(folder / "export" / "model.safetensors") is not None
