"""What decides when `fit` stops, and what it shows while it runs.

- `EarlyStopping`: stop after `patience` epochs without improvement of a monitored
  record key ("val_nll", "val_accuracy", "loss", ...); its direction (min / max)
  comes from the metric's name (`bayesprune.metrics.directions`). Its state is a pure
  function of the per-epoch records, so a resumed `fit` rebuilds it from the history
  stored in the checkpoint and stops exactly where an uninterrupted run would.
- `StopTraining`: a callback raises it (or returns False) to end training after
  the current epoch, as Lightning's `trainer.should_stop = True` does.
- `EpochBar`: one tqdm bar per epoch that stays on screen with the epoch's loss and
  validation metrics (Lightning's layout); nothing when not on a terminal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from .io import CheckpointError, load_tensors
from .metrics.directions import METRIC_DIRECTIONS, Direction
from .options import Choice

Callback = Callable[[dict[str, Any]], "bool | None"]
"""Called with each epoch's record after it is checkpointed; return False (or raise
`StopTraining`) to end training there. Any other return value is ignored."""


class StopTraining(Exception):
    """Raised by a callback to end `fit` after the current epoch (its checkpoint is kept)."""


class MonitorMode(Choice):
    """Whether the monitored value should go down ("min") or up ("max")."""

    MIN = "min"
    MAX = "max"


_TRAIN_KEYS = ("loss", "nll", "kl")  # training records, all lower-is-better


def mode_of(monitor: str) -> MonitorMode:
    """ "min" or "max" for a record key: "val_<metric>" reads the metric's direction."""
    name = monitor.removeprefix("val_")
    if monitor in _TRAIN_KEYS:
        return MonitorMode.MIN
    if name not in METRIC_DIRECTIONS:
        known = sorted({*_TRAIN_KEYS, *(f"val_{k}" for k in METRIC_DIRECTIONS)})
        raise ValueError(
            f"cannot tell which way {monitor!r} improves; monitor one of {known}, or pass "
            "monitor_mode='min' / 'max'"
        )
    return MonitorMode.MAX if METRIC_DIRECTIONS[name] is Direction.HIGHER else MonitorMode.MIN


@dataclass
class EarlyStopping:
    """Tracks the best value of `monitor`; `should_stop` after `patience` epochs without a
    gain larger than `min_delta` (patience None: never stops, only tracks the best)."""

    monitor: str
    patience: int | None
    mode: MonitorMode
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0  # 1-based epoch of the best record; 0 before any
    wait: int = 0

    def update(self, record: Mapping[str, Any]) -> bool:
        """Read one epoch's record; True when it is the new best."""
        if self.monitor not in record:
            raise ValueError(
                f"early stopping monitors {self.monitor!r}, which epoch records lack (they hold "
                f"{sorted(k for k in record if isinstance(record[k], float))}); pass val= "
                "for validation metrics, or monitor another key"
            )
        value = float(record[self.monitor])
        better = self.best is None or (
            value < self.best - self.min_delta
            if self.mode == MonitorMode.MIN
            else value > self.best + self.min_delta
        )
        if better and math.isfinite(value):
            self.best, self.best_epoch, self.wait = value, int(record["epoch"]), 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def replay(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Rebuild the state from earlier records (a resumed run's history)."""
        for record in records:
            self.update(record)


def make_stopper(
    monitor: str | None,
    patience: int | None,
    mode: str | None,
    min_delta: float,
    has_val: bool,
) -> EarlyStopping | None:
    """The tracker `fit` needs for `early_stopping` / `restore_best`, or None for neither."""
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise ValueError(f"early_stopping must be a patience in epochs >= 1, got {patience!r}")
    if monitor is None:
        monitor = "val_nll" if has_val else "loss"
    if monitor.startswith("val_") and not has_val:
        raise ValueError(f"monitor={monitor!r} needs validation data: pass val=")
    if not (min_delta >= 0 and math.isfinite(min_delta)):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    chosen = MonitorMode(mode) if mode is not None else mode_of(monitor)
    return EarlyStopping(monitor, patience, chosen, min_delta)


def run_callbacks(callbacks: Iterable[Callback], record: dict[str, Any]) -> bool:
    """Call every callback with `record`; True when one asks training to stop."""
    stop = False
    for callback in callbacks:
        try:
            if callback(record) is False:
                stop = True
        except StopTraining:
            stop = True
    return stop


class EpochBar:
    """One progress bar per epoch, left on screen with the epoch's figures."""

    def __init__(self, epoch: int, epochs: int, total: int | None, show: bool) -> None:
        # no bar object at all when hidden: on a small table an epoch is one step
        desc = f"epoch {epoch + 1}/{epochs}"
        self._bar = tqdm(total=total, desc=desc, leave=True) if show else None

    def step(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self, record: Mapping[str, Any]) -> None:
        """Show the epoch's mean loss and validation metrics, then leave the bar."""
        if self._bar is None:
            return
        shown = {
            k: f"{v:.4g}"
            for k, v in record.items()
            if k == "loss" or (k.startswith("val_") and isinstance(v, float))
        }
        self._bar.set_postfix(shown, refresh=True)
        self._bar.close()


def state_of(model: nn.Module, likelihood: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the parameters and buffers of model and likelihood."""
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state |= {f"likelihood.{k}": v.detach().clone() for k, v in likelihood.state_dict().items()}
    return state


def load_state(model: nn.Module, likelihood: nn.Module, state: dict[str, Tensor]) -> None:
    for prefix, module in (("model.", model), ("likelihood.", likelihood)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part)


def load_best(folder: Path, epoch: int) -> dict[str, Tensor] | None:
    """The best state saved before a resume; None (with a warning) if it is not there."""
    path = folder / BEST_FILE
    try:
        state, meta = load_tensors(path)
    except (CheckpointError, OSError):
        state, meta = {}, {}
    if meta.get("epoch") != epoch:
        warnings.warn(
            f"restore_best: {path} does not hold epoch {epoch}, the best before the resume; "
            "the best epoch from here on will be restored instead",
            stacklevel=3,
        )
        return None
    return state


BEST_FILE = "best.safetensors"  # in checkpoint_dir: the best state, for restore_best on resume
