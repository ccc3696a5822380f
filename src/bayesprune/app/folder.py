"""A run folder: one config, its data, its model, and everything the commands write.

Layout of a run folder::

    config.yaml             the validated config (every key, defaults included)
    log.txt                 one timestamped line per event, appended by every command
    checkpoints/            epoch-NNNN.safetensors (training state; `train` resumes from them)
    model.safetensors       the trained model (safetensors + JSON architecture spec)
    likelihood.safetensors  learned likelihood parameters (regression noise), if any
    metrics.json            training history and test metrics
    evaluation.json         `evaluate`: metrics of the trained / compressed model, MC and mean
    compressed/             `compress`: model.safetensors, compression.json / .md
    restored/               `restore`: model.safetensors, restore.json (method chosen on
                            validation, metrics before / after)
    features.json, .png     `select-features`
    report/                 `report`: report.html (self-contained), report.md, *.png
    export/                 `export`: model.onnx, model.safetensors (deterministic), export.json
    manifests/              SET.json per artefact set (train, compress, restore, features,
                            export, report): size and SHA-256 of each file, written last
    .lock                   the pid of the process using the folder (an fcntl lock)

Every command holds the folder's lock while it runs, and publishes each set of files
it writes together (`app.transaction`): a kill leaves the old set or the new one,
and a reader verifies a set against its manifest before trusting it. Options given
on the command line (`compress --rule ...`) are recorded in the step's JSON, never
written into config.yaml, which only `train` writes.

Everything is rebuilt from the config (`app.data`, `app.factory`): the data
deterministically from its seed, the model from its builder. Models are saved with
`compress.save_model` (a JSON architecture spec in the safetensors header) so a
shrunk model reloads with its new widths; nothing is ever pickled.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..compress import load_model, save_model
from ..compress.persist import FORMAT as SHRUNK_FORMAT
from ..compress.persist import load_shrunk, save_shrunk
from ..io import CheckpointError, atomic_write_bytes, atomic_write_json, load_tensors, save_tensors
from ..likelihoods import Likelihood
from ..nn import get_family, variational_layers
from ..validation import check_device, resolve_device
from .config import (
    ConfigError,
    RunConfig,
    config_to_dict,
    dump_config,
    load_config,
    with_overrides,
)
from .data import RunData, load_data
from .factory import build_model, flattens, run_likelihood
from .transaction import ArtefactSet, RunFolderError, Transaction, folder_lock, recover, verify

TRAINING_SECTIONS = ("data", "model", "train")  # a change here needs a new run folder
STATE_FORMAT = "bayesprune-run-state"

ARTEFACTS = {
    s.name: s
    for s in (
        ArtefactSet(
            "train",
            "train {run}/config.yaml --out {run}",
            files=("model.safetensors", "likelihood.safetensors", "metrics.json"),
        ),
        ArtefactSet("compress", "compress {run}", directory="compressed"),
        ArtefactSet("restore", "restore {run}", directory="restored"),
        ArtefactSet("features", "select-features {run}", files=("features.json", "features.png")),
        ArtefactSet("export", "export {run}", directory="export"),
        ArtefactSet("report", "report {run}", directory="report"),
    )
}
"""The sets of files each step publishes together, with one manifest each."""

_MODEL_SET = {"trained": "train", "compressed": "compress", "restored": "restore"}
_MODEL_FILES = {
    "trained": "model.safetensors",
    "compressed": "compressed/model.safetensors",
    "restored": "restored/model.safetensors",
}


def lock_folder(folder: str | Path) -> Any:
    """Hold `folder`'s lock (see `app.transaction`); recovers the folder when taken."""
    return folder_lock(folder, on_acquire=recover)


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} → {b!r}"


class Run:
    """A run folder and its config; opens and writes the files listed in the module doc."""

    def __init__(self, folder: str | Path, config: RunConfig) -> None:
        self.folder = Path(folder)
        self.config = config
        self._data: RunData | None = None
        self._fallbacks_noted: set[str] = set()  # shared with derived runs: one log line each

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path) -> Run:
        """An existing run; a folder without config.yaml is one clear error."""
        folder = Path(folder)
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(
                f"{folder} is not a run folder (no config.yaml); create one with "
                "`bayesprune train CONFIG --out FOLDER`"
            )
        return cls(folder, load_config(folder / "config.yaml"))

    @classmethod
    def create(cls, folder: str | Path, config: RunConfig) -> Run:
        """A new run folder, or the existing one when its training sections are the same.

        Sections that only later commands read (compress, features, evaluate) may
        change; they are rewritten. A change to data, model or train is refused,
        because the checkpoints there belong to the old settings (a folder where
        nothing was trained yet takes the new config). Call it holding the
        folder's lock (`lock_folder`), as `train_run` does.
        """
        folder = Path(folder)
        path = folder / "config.yaml"
        nothing_trained = (
            not any((folder / "checkpoints").glob("*"))
            and not (folder / "model.safetensors").exists()
        )  # e.g. the first attempt stopped at a config error: start over
        if path.is_file() and not nothing_trained:
            old = config_to_dict(load_config(path))
            new = config_to_dict(config)
            for section in TRAINING_SECTIONS:
                diff = _first_difference(old[section], new[section], section)
                if diff:
                    raise ConfigError(
                        f"{folder} was trained with a different config ({diff}); use a new "
                        "--out folder, or delete this one to start over"
                    )
        atomic_write_bytes(path, dump_config(config).encode())
        return cls(folder, config)

    def with_config(self, config: RunConfig) -> Run:
        """The same folder read with other options (e.g. command-line overrides), config.yaml
        untouched; the data are shared when the data section is the same."""
        other = Run(self.folder, config)
        other._fallbacks_noted = self._fallbacks_noted  # one log.txt, one note per device
        if config.data == self.config.data:
            other._data = self._data
        return other

    def on_device(self, device: str) -> Run:
        """The same run computing on `device` (a command's `--device`): checked here,
        config.yaml untouched. Unlike `train.device`, an explicit device this machine
        lacks is an error, not a fallback."""
        other = self.with_config(with_overrides(self.config, "train", {"device": device}))
        check_device(device)
        return other

    # -- locking and artefact sets -------------------------------------------------------
    def locked(self) -> Any:
        """Context manager: hold the folder's lock (re-entrant within a process)."""
        return lock_folder(self.folder)

    @contextmanager
    def publish(self, name: str) -> Iterator[Transaction]:
        """Write artefact set `name`: stage files on the transaction; on success they are
        published together with their manifest, on error discarded."""
        with self.locked():
            tx = Transaction(self.folder, ARTEFACTS[name])
            try:
                yield tx
            except BaseException:
                tx.discard()
                raise
            tx.commit()

    def artefacts(self, name: str) -> dict[str, Any] | None:
        """The verified manifest of set `name`; None if absent; RunFolderError if incomplete."""
        return verify(self.folder, ARTEFACTS[name])

    # -- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)

    @property
    def checkpoints(self) -> Path:
        return self.path("checkpoints")

    def model_path(self, which: str = "trained") -> Path:
        if which not in _MODEL_FILES:
            raise ValueError(f"unknown model {which!r}; valid: {sorted(_MODEL_FILES)}")
        return self.path(_MODEL_FILES[which])

    def _model_record(self, which: str) -> dict[str, Any] | None:
        manifest = self.artefacts(_MODEL_SET[which]) if which in _MODEL_SET else None
        rel = self.model_path(which).relative_to(self.folder).as_posix()
        return None if manifest is None else manifest["files"].get(rel)

    def has_model(self, which: str = "trained") -> bool:
        """Whether model `which` was published whole (an incomplete set is an error)."""
        self.model_path(which)  # checks the name
        return self._model_record(which) is not None

    def model_digest(self, which: str = "trained") -> str | None:
        """SHA-256 of the saved model file (None if absent): keys cached evaluations."""
        self.model_path(which)
        record = self._model_record(which)
        return None if record is None else record["sha256"]

    # -- logging and JSON ----------------------------------------------------------------
    def log(self, message: str) -> None:
        """Append one timestamped line to log.txt; never through a planted symlink or into
        anything but a regular file (a FIFO would block, a link would write elsewhere)."""
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path("log.txt")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise RunFolderError(f"cannot append to {path} ({err.strerror}); it must be a "
                                 "regular file, not a link: remove it") from err  # fmt: skip
        with open(fd, "a", encoding="utf-8") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunFolderError(f"{path} is not a regular file; remove it")
            handle.write(f"{stamp} {message}\n")

    def write_json(self, name: str, obj: Any) -> Path:
        """A JSON file of its own (evaluation.json); a set's files go through `publish`."""
        owner = self._owner(name)
        if owner is not None:
            raise ValueError(f"{name} belongs to the {owner} outputs; write it with publish()")
        return atomic_write_json(self.path(name), obj)

    def _owner(self, name: str) -> str | None:
        return next((s.name for s in ARTEFACTS.values() if s.owns(name)), None)

    def read_json(self, name: str) -> Any | None:
        """A JSON file of the run, None if absent; a file of an artefact set is read only
        when its set verifies against the manifest."""
        owner = self._owner(name)
        if owner is not None and self.artefacts(owner) is None:
            return None
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); rerun the command") from err

    # -- data, model, likelihood ---------------------------------------------------------
    def data(self) -> RunData:
        if self._data is None:
            self._data = load_data(self.config.data, flatten=flattens(self.config))
        return self._data

    def build_model(self) -> nn.Module:
        return build_model(self.config, self.data())

    @property
    def device(self) -> torch.device:
        """Where the steps after training compute (search, fine-tunes, predictions): the
        run's `train.device` where this machine has it, else the CPU, so a run trained on
        a GPU still compresses, evaluates and restores on a laptop."""
        wanted = resolve_device(self.config.train.device)
        try:
            check_device(wanted)
        except ValueError:
            if str(wanted) not in self._fallbacks_noted:
                self._fallbacks_noted.add(str(wanted))
                self.log(
                    f"train.device {str(wanted)!r} is not available here; computing on the cpu"
                )
            return torch.device("cpu")
        return wanted

    def likelihood(self) -> Likelihood:
        """The run's likelihood with its trained parameters (when training published them)."""
        likelihood = run_likelihood(self.config, self.data().task)
        path = self.path("likelihood.safetensors")
        manifest = self.artefacts("train")
        if manifest is not None and "likelihood.safetensors" in manifest["files"]:
            tensors, _ = load_tensors(path)
            likelihood.load_state_dict(tensors)
        return likelihood

    def save_likelihood(self, likelihood: Likelihood, tx: Transaction) -> None:
        state = likelihood.state_dict()
        if state:
            save_tensors(tx.stage("likelihood.safetensors"), dict(state))

    def save_model(
        self,
        model: nn.Module,
        which: str = "trained",
        metadata: dict | None = None,
        *,
        tx: Transaction,
    ) -> Path:
        """Save with the architecture spec, staged on `tx`. A model the spec cannot describe
        (a graph such as the `resnet` builder's, eVI) is saved as a state dict if the
        config rebuilds its architecture, else (a shrunk graph) with its pruned shapes
        (`compress.save_shrunk`), re-applied to the config's model on load."""
        path = tx.stage(self.model_path(which).relative_to(self.folder).as_posix())
        model = _on_cpu(model)  # the file does not depend on where the step computed
        meta = {"input_shape": list(self.data().input_shape), **(metadata or {})}
        try:
            return save_model(model, path, meta)
        except TypeError as err:
            state, fresh = dict(model.state_dict()), self.build_model()
            if self._rebuilds(state, fresh):
                return save_tensors(path, state, {"format": STATE_FORMAT, **meta})
            if not isinstance(model, type(fresh)):
                raise ConfigError(
                    f"cannot save the {which} model: {err}. Set compress.shrink: false to keep "
                    "the original architecture (masked), which is rebuilt from the config"
                ) from err
            return save_shrunk(model, path, meta)

    def _fresh_model(self, tensors: dict[str, Tensor], model: nn.Module | None = None) -> nn.Module:
        """The config's model (`model`, or a new one), with weight-mask buffers where
        `tensors` holds masks."""
        model = self.build_model() if model is None else model
        for name, layer in variational_layers(model):
            mask = tensors.get(f"{name}.weight_mask" if name else "weight_mask")
            if mask is not None:
                layer.set_weight_mask(torch.ones_like(mask))
        return model

    def _rebuilds(self, state: dict[str, Tensor], model: nn.Module) -> bool:
        """Whether `state` loads into `model`, the config's model (given masks here)."""
        try:
            fresh = self._fresh_model(state, model).state_dict()
        except ValueError:  # a mask of another shape: the layer was shrunk
            return False
        same_keys = fresh.keys() == state.keys()
        return same_keys and all(fresh[k].shape == v.shape for k, v in state.items())

    def load_model(self, which: str = "trained", *, on_device: bool = False) -> nn.Module:
        """The saved model `which`, on the CPU, or with `on_device` on `self.device`."""
        model = self._load_model(which)
        return model.to(self.device) if on_device else model

    def _load_model(self, which: str) -> nn.Module:
        path = self.model_path(which)
        if not self.has_model(which):
            step = {"trained": "train CONFIG --out RUN", "compressed": "compress RUN"}.get(
                which, f"{_MODEL_SET[which]} RUN"
            )
            raise FileNotFoundError(f"{path} is missing; run `bayesprune {step}` first")
        tensors, meta = load_tensors(path)
        if meta.get("format") == SHRUNK_FORMAT:
            return load_shrunk(path, self.build_model)
        if meta.get("format") != STATE_FORMAT:
            return load_model(path)
        model = self._fresh_model(tensors)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit the run's model ({err})") from err
        return model.eval()

    def describe(self) -> dict[str, Any]:
        """A short JSON-able summary of the run's data and model (for metrics and reports)."""
        d, m = self.data(), self.config.model
        return {
            "data": self.config.data.name,
            "task": d.task,
            "n_train": len(d.train[0]),
            "n_val": 0 if d.val is None else len(d.val[0]),
            "n_test": len(d.test[0]),
            "input_shape": list(d.input_shape),
            "n_outputs": d.n_outputs,
            "builder": m.builder,
            "family": m.family,
            "bayesian": get_family(m.family).bayesian,
        }


def _on_cpu(model: nn.Module) -> nn.Module:
    """`model` itself when it is on the CPU, else a CPU copy (the caller's stays put)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()
