"""Training defaults of the scikit-learn estimators that follow the data, not a fixed epoch count.

A fixed number of epochs means a few hundred optimiser steps on a table of a few hundred
rows, too few for spike-and-slab input gates (initialised at 0.99) to move, and tens of
thousands on a large table. The estimators therefore count optimiser steps (the values
and the measurements behind them: docs/spike_slab.md, "Small tables"):

- `step_budget`: `max_steps` steps with epochs="auto" (never fewer than `min_steps`),
  whatever the number of rows; epochs follow from rows and batch size.
- `auto_batch_size`: the whole table in each step up to `FULL_BATCH_ROWS` rows.
- `EarlyStopping` (off by default in the estimators): a `bayesprune.fit` callback that
  scores a validation split carved from the training rows every `every` steps once
  `start_step` steps are done, with the estimator's prediction mode (Monte Carlo by
  default: the posterior-mean network can have every hidden unit closed while the
  Monte-Carlo predictive is good), keeps the best posterior (model and likelihood state)
  by the monitored metric, stops after `patience` steps without improvement, and
  restores the best state at the end.
- `validation_rows`: the split (stratified for classes), seeded.
- `fallback_support`: the expected-size rule for a selection that came out empty.
- `auto_kl_weight`: the KL weight by the number of training rows (`kl_weight="auto"`).
- `AUTO_N_INIT`, `restart_score`: how many restarts a fit makes (`n_init="auto"`) and
  which one it keeps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from .evaluation import evaluate
from .likelihoods import Likelihood

MONITORS = {"nll": -1.0, "accuracy": 1.0, "rmse": -1.0}
"""Validation metrics early stopping can monitor, with the sign that makes larger better."""


class StopTraining(Exception):
    """Raised by `EarlyStopping` inside `bayesprune.fit` to end training (caught by the caller)."""


@dataclass(frozen=True)
class StepBudget:
    """How long a fit trains: `epochs` of `steps_per_epoch` optimiser steps."""

    epochs: int
    steps_per_epoch: int

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def step_budget(
    n_rows: int, batch_size: int, epochs: int | str, min_steps: int, max_steps: int
) -> StepBudget:
    """Epochs for `n_rows` rows: `epochs` when given as an int, else ("auto") enough for
    `max_steps` steps, and never fewer than `min_steps` steps."""
    per_epoch = max(1, math.ceil(n_rows / batch_size))
    if epochs == "auto":
        wanted = max(min_steps, max_steps)
    else:
        wanted = max(int(epochs) * per_epoch, min_steps)
    return StepBudget(max(1, math.ceil(wanted / per_epoch)), per_epoch)


FULL_BATCH_ROWS = 1024
"""`batch_size="auto"`: every training row in one batch up to this many rows, else batches of it."""


def auto_batch_size(n_rows: int, batch_size: int | str) -> int:
    """The batch size for `n_rows` training rows: `batch_size`, or with "auto" the whole
    set up to `FULL_BATCH_ROWS` rows (a step then costs about the same as a small batch
    on a table of a few hundred rows, and the gates see the whole likelihood)."""
    wanted = FULL_BATCH_ROWS if batch_size == "auto" else int(batch_size)
    return max(1, min(wanted, n_rows))


TEMPERED_KL = 0.7
"""`kl_weight="auto"` below `FULL_KL_ROWS` training rows: the likelihood outweighs the prior."""
FULL_KL_ROWS = 1000
"""`kl_weight="auto"`: the full KL (1.0) from this many training rows on."""


SCALE_FAMILIES = frozenset({"sparse_vd_group"})
"""Families that select inputs by one log-uniform scale per input column, not by gates.
Their `kl_weight="auto"` is always 1.0 (a scale's KL is a few nats; tempered to 0.7 it kept
17.7 of 20 noise columns on 331 rows) and their `refit="auto"` is False (no gate noise
to shed: the refit lost 0.7-6 points on the four smallest designs); development splits,
benchmarks/README.md "Issue 17, session 19"."""


def auto_kl_weight(n_rows: int, kl_weight: float | str, family: str = "spike_slab") -> float:
    """The KL weight for `n_rows` training rows: `kl_weight`, or with "auto" the tempered
    `TEMPERED_KL` below `FULL_KL_ROWS` rows (spike-and-slab: on a few hundred rows the full
    KL keeps too few of the true columns) and 1.0 from there (with thousands of rows the
    tempered KL lets noise columns in); 1.0 for `SCALE_FAMILIES`."""
    if kl_weight != "auto":
        return float(kl_weight)
    if family in SCALE_FAMILIES:
        return 1.0
    return TEMPERED_KL if n_rows < FULL_KL_ROWS else 1.0


def auto_refit(refit: bool | str, family: str) -> bool:
    """Whether a relaxed network is refitted on the kept columns: `refit`, or with "auto"
    every family but `SCALE_FAMILIES`."""
    return family not in SCALE_FAMILIES if refit == "auto" else bool(refit)


AUTO_N_INIT = {"classification": 1, "regression": 3}
"""`n_init="auto"` by task. A regressor's selection can be bimodal: a column that acts
only through an interaction (Bai's x1) ends clearly in or clearly out, by the start. On
the development splits the best of three starts by `restart_score` found it more often
(TPR 0.83 → 0.90 on Bai's design), dropped Friedman n=200's stray noise column (0.17 →
0) and scored as well or better on every regression design (benchmarks/README.md,
"Issue 17, session 23"). A classifier keeps one start: its misses are columns the rows
carry no evidence for, and its 500 × 50 fit has a 10 s budget."""
RESTART_SCORE_EPOCHS = 50
"""`restart_score` averages the training objective over this many final epochs (one
Monte-Carlo draw per step, so one epoch's figure is noisy)."""


def restart_score(history: list[dict[str, Any]], best_epoch: int | None, monitor: str) -> float:
    """A start's score, larger is better: with early stopping, the best validation
    `monitor`; else the ELBO per training row (minus the mean training loss, NLL + the
    weighted KL, of the last `RESTART_SCORE_EPOCHS` epochs): the bound each start
    maximises, as scikit-learn's mixtures keep the start with the best lower bound.
    (The training NLL alone kept a stray noise column on Friedman n=200 and lost 0.4
    points R² on diabetes on the development splits.)"""
    key = f"val_{monitor}"
    if best_epoch is not None and key in history[best_epoch - 1]:
        return MONITORS[monitor] * float(history[best_epoch - 1][key])
    tail = history[-RESTART_SCORE_EPOCHS:]
    return -float(np.mean([r["loss"] for r in tail])) if tail else -math.inf


def validation_rows(
    n: int, fraction: float, seed: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """A boolean mask of the rows held out for validation (stratified when `labels` given).

    Every class keeps at least one training row; at least one row is held out."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    for rows in groups:
        take = min(round(fraction * len(rows)), len(rows) - 1)
        mask[rng.permutation(rows)[:take]] = True
    if not mask.any():
        mask[rng.integers(n)] = True
    return mask


@dataclass
class EarlyStopping:
    """`bayesprune.fit` callback: keep the best posterior by `monitor` (see the module doc).

    It scores `val` itself (`mode` "mc" with `samples` draws from `seed`, or "mean"),
    every `every` optimiser steps rather than every epoch: on 100 rows an epoch is one
    step, and scoring each would cost more than the training."""

    model: nn.Module
    likelihood: Likelihood
    val: tuple[Tensor, Tensor]
    monitor: str
    steps_per_epoch: int
    start_step: int
    patience: int
    mode: str = "mc"
    samples: int = 20
    seed: int = 0
    every: int = 50
    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    _best_state: tuple[dict[str, Any], dict[str, Any]] | None = None
    _last_check: int = -1

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        epoch = len(self.records)
        step = epoch * self.steps_per_epoch
        if step < self.start_step or step - self._last_check < self.every:
            return
        self._last_check = step
        scores = evaluate(
            self.model, self.val, self.likelihood, mode=self.mode, samples=self.samples,
            seed=self.seed, metrics=[self.monitor],
        )  # fmt: skip
        record[f"val_{self.monitor}"] = scores[self.monitor]
        score = MONITORS[self.monitor] * float(scores[self.monitor])
        if self.best_epoch is None or score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self._best_state = (
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.likelihood.state_dict()),
            )
        elif (epoch - self.best_epoch) * self.steps_per_epoch >= self.patience:
            raise StopTraining

    def restore(self) -> None:
        """Load the best state seen (no-op when monitoring never started)."""
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state[0])
            self.likelihood.load_state_dict(self._best_state[1])


def fallback_support(pips: np.ndarray) -> np.ndarray:
    """The expected-size rule: the max(1, round(Σ PIP)) features with the highest PIPs."""
    k = max(1, round(float(pips.sum())))
    mask = np.zeros(len(pips), dtype=bool)
    mask[np.argsort(-pips, kind="stable")[:k]] = True
    return mask
