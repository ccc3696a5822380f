"""scikit-learn estimators: a Bayesian MLP that also tells which input features it uses.

(Over 400 lines on purpose: the scikit-learn contract — parameters, validation, fit,
selection, screen, prediction — of one shared base class reads best in one place; the
data-dependent defaults and early stopping live in `estimator_defaults`.)

`BayesianMLPClassifier` trains a spike-and-slab MLP with a gate on every input feature
and `BayesianMLPRegressor` a group Sparse VD MLP with a log-uniform scale on every input
feature (the defaults, `family="auto"`; any other family by name), with
`bayesprune.fit`, and both predict by Monte-Carlo averaging over the posterior. They
follow the scikit-learn contract: `__init__` only stores its arguments, `fit` validates
them, fitted attributes end in `_`, `clone`, `Pipeline`, `cross_val_score` and
`GridSearchCV` work.

Feature selection: `feature_importances_` are the input PIPs (posterior inclusion
probabilities of the input gates) of a spike-and-slab model; with group Sparse VD
(`family="sparse_vd_group"`: one log-uniform scale z_i ~ N(μ, αμ²) per input column)
each scale's signal share μ² / E[z²] = 1 / (1 + α); else the norm of each input's
outgoing posterior-mean weights divided by the largest. `get_support()` keeps PIP >
`selection_threshold` (0.5, the median-probability model), a share above it (default
1 / (1 + e^cut): log α < cut, −2 for a classifier and −3 for a regressor, chosen on
development splits), or, for norms, importance ≥ it (0.1 of the largest); `transform(X)`
returns the kept columns, so the estimator can feed a later Pipeline step via
`sklearn.feature_selection.SelectFromModel` as well. With `screen=True` (spike-and-slab
with input gates) `fit` then runs the evidence screen (`bayesprune.screen`) on the
features the PIPs left out, and `get_support()` also keeps those it adds (`screen_`
holds the gains): features that act only through an interaction, which a gate can
miss.

Prediction (`refit="auto"`, the default: True for spike-and-slab and the other families,
False for group Sparse VD, whose selection network has no gate noise to shed): after the
selection, a second network without input gates is trained on the kept columns
(`refit_steps` optimiser steps with epochs="auto"), the relaxed-lasso idea: the selection
is the first network's, the predictions the second's, which no longer pays the gates'
noise and prior on the inputs it uses (columns added by the screen included). Its family
(`refit_family="auto"`) is a mean-field Gaussian MLP for a classifier's spike-and-slab
selection and the selection's own family otherwise. The posterior keeps one column of a
group of correlated ones; the refit also reads the kept columns' proxies, every column
whose absolute correlation with a kept one on the training rows exceeds
`refit_correlation` ("auto": 0.4 for a refit network without gates; None, the kept
columns only, for a gated one, whose posterior-mean network lost 13-19 points with them),
and averages the group's measurement noise.
`refit_columns_` are the columns it reads (`get_support()` stays the selection).

Random starts (`n_init`; "auto": 3 for a regressor, 1 for a classifier): the selection
network is trained from each and the start with the best ELBO is kept. A column that acts
only through an interaction has no gradient until the interaction is learned, so whether
it is kept can depend on the start.
`model_` is the selection network, `refit_model_` the predicting one; with `refit=False`
`model_` predicts and reads every column.

Inputs are standardised inside (with training statistics), so the priors mean the
same for every data set; regression targets too (predictions are returned in the
original units).

scikit-learn estimator checks that do not apply (see tests/test_sklearn.py):

- check_methods_subset_invariance, check_methods_sample_order_invariance: with
  `predict_mode="mc"` the sampled forward passes draw their noise from one seeded
  stream per batch, so a row's Monte-Carlo prediction depends on which rows share
  its batch (by Monte-Carlo error only). With `predict_mode="mean"` they pass.
- check_sample_weight_equivalence*: `fit` takes no `sample_weight`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .compress import input_scores
from .estimator_defaults import (
    AUTO_N_INIT,
    MONITORS,
    EarlyStopping,
    StepBudget,
    StopTraining,
    auto_batch_size,
    auto_kl_weight,
    auto_refit,
    fallback_support,
    restart_score,
    step_budget,
    validation_rows,
)
from .likelihoods import Gaussian, make_likelihood
from .models import mlp
from .nn import families, get_family
from .predict import MODES, predict
from .screen import ScreenResult, screen_features
from .train import fit

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6

    def validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


FAMILY_AUTO = "auto"
GATES_FAMILY = "spike_slab"
"""`family="auto"` wherever input PIPs are needed (input gates)."""
AUTO_FAMILY = {"classification": GATES_FAMILY, "regression": "sparse_vd_group"}
"""`family="auto"` by task: a regressor selects with a log-uniform scale per input column."""
GATED_REFIT_FAMILY = {"classification": "gaussian", "regression": None}
"""With `refit_family="auto"`: the refit network's family when the selection network is
gated, by task (None: the selection's family; see `_auto_refit_family`)."""
GATE_SUFFIX = "gate_logit"  # unit and input gate logits of the spike-and-slab layers
_MAX_FLOAT32 = float(np.finfo(np.float32).max)
CONSTANT_TOL = 1e-7
"""A posterior-mean prediction whose spread over the training rows is below this is constant."""
AUTO_PROXY_CORRELATION = 0.4
"""`refit_correlation="auto"` with a gate-free refit network: a column whose absolute
correlation with a kept one exceeds this is read too (development splits, a Gaussian
refit: wine 0.967 without the proxies, 0.978 with them; breast cancer 0.970 / 0.969; the
simulations' independent columns never pass)."""
SCALE_KIND = "scale"
"""`importance_kind_` of group Sparse VD: each input scale's signal share 1 / (1 + α)."""
SCALE_LOG_ALPHA_CUT = {"classification": -2.0, "regression": -3.0}
"""group Sparse VD keeps an input whose scale has log α below this, by task (chosen on
development splits of the small-table designs: benchmarks/README.md, "Issue 17, session
19" for every design, "session 21" for the regressor's default: there every true column
sat below −4.5 and the noise columns above −2.7 but one)."""
DEFAULT_THRESHOLDS = {"pip": 0.5, "norm": 0.1}
"""`get_support()` keeps importance > the threshold (PIP; the scale share above
1 / (1 + e^cut) of `SCALE_LOG_ALPHA_CUT`) or >= it (norm)."""
IMPORTANCE_NAMES = {
    "pip": "PIP",
    SCALE_KIND: "input scale share 1/(1+α)",
    "norm": "relative input norm",
}
"""How warnings name each kind of `feature_importances_`."""
MEAN_GATES = "expected"
"""Gates of the estimators' posterior-mean network (`predict_mode="mean"`): each slab times
its PIP. The median-probability network (gates 1[PIP > 0.5]) closes every hidden unit on
small tables, where the hidden PIPs stay near their prior, and predicts a constant."""


def _mean_std(a: np.ndarray, axis: int | None = 0) -> tuple[Any, Any]:
    """Mean and standard deviation without overflow: computed on `a` / max|a|, then scaled.

    `np.std` squares the values, so a column of magnitude 1e160 has an infinite std, and
    dividing by it would silently zero the column.
    """
    big = np.abs(a).max(axis=axis, keepdims=True) if a.size else np.ones((1,) * a.ndim)
    big = np.where(big > 0, big, 1.0)
    unit = a / big
    squeeze = np.squeeze(big, axis=axis) if axis is not None else float(big.reshape(-1)[0])
    return unit.mean(axis) * squeeze, unit.std(axis) * squeeze


class _Trained(NamedTuple):
    """One network trained by `_train`: its likelihood, per-epoch records, the epoch early
    stopping restored (None without it) and the step budget it ran under."""

    model: nn.Module
    likelihood: Any
    history: list[dict]
    best_epoch: int | None
    budget: StepBudget


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= least


class _BayesianMLP(SelectorMixin, BaseEstimator):
    """Shared fit / feature-selection logic; subclasses say the task and the output."""

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (64,),
        *,
        family: str = FAMILY_AUTO,
        input_gates: bool = True,
        activation: str = "relu",
        epochs: int | str = "auto",
        batch_size: int | str = "auto",
        lr: float = 1e-2,
        gate_lr_multiplier: float = 10.0,
        kl_warmup_steps: int = 500,
        min_steps: int = 500,
        max_steps: int = 1000,
        early_stopping: bool = False,
        validation_fraction: float = 0.2,
        patience: int = 500,
        monitor: str = "nll",
        kl_weight: float | str = "auto",
        prior_scale: float = 1.0,
        slab_scale: float = 2.0,
        prior_inclusion: float | None = None,
        input_prior_inclusion: float | None = None,
        gate_init: float = 0.99,
        samples: int = 20,
        predict_mode: str = "mc",
        selection_threshold: float | None = None,
        screen: bool = False,
        screen_epochs: int = 150,
        refit: bool | str = "auto",
        refit_steps: int = 500,
        refit_correlation: float | str | None = "auto",
        refit_family: str = "auto",
        standardize: bool = True,
        n_init: int | str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.family = family
        self.input_gates = input_gates
        self.activation = activation
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.gate_lr_multiplier = gate_lr_multiplier
        self.kl_warmup_steps = kl_warmup_steps
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.monitor = monitor
        self.kl_weight = kl_weight
        self.prior_scale = prior_scale
        self.slab_scale = slab_scale
        self.prior_inclusion = prior_inclusion
        self.input_prior_inclusion = input_prior_inclusion
        self.gate_init = gate_init
        self.samples = samples
        self.predict_mode = predict_mode
        self.selection_threshold = selection_threshold
        self.screen = screen
        self.screen_epochs = screen_epochs
        self.refit = refit
        self.refit_steps = refit_steps
        self.refit_correlation = refit_correlation
        self.refit_family = refit_family
        self.standardize = standardize
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose

    # -- validation -----------------------------------------------------------------------
    _task = "classification"
    """"classification" or "regression" (the subclasses say): keys `AUTO_FAMILY`,
    `GATED_REFIT_FAMILY`, `SCALE_LOG_ALPHA_CUT` and `AUTO_N_INIT`."""

    def _auto_refit_family(self, family: str) -> str:
        """`refit_family="auto"`: a classifier's gated selection is refitted as a mean-field
        Gaussian MLP (development splits: better on 4 of 5 classification designs, and its
        posterior-mean network is as good as Monte Carlo); otherwise the selection's family
        (a regressor: the Gaussian refit lost 11 points R² on diabetes)."""
        if self.refit_family != FAMILY_AUTO:
            return self.refit_family
        refit = GATED_REFIT_FAMILY[self._task]
        return refit if refit is not None and get_family(family).gated else family

    def _auto_refit_correlation(self) -> float | None:
        """`refit_correlation="auto"`: the proxies when the refit network has no gates
        (`AUTO_PROXY_CORRELATION`); none for a gated refit, whose posterior-mean network
        lost 13-19 points with them (its hidden units close)."""
        if self.refit_correlation != "auto":
            return self.refit_correlation
        return None if get_family(self.refit_family_).gated else AUTO_PROXY_CORRELATION

    def _auto_family(self) -> str:
        """`family="auto"`: the task's family, chosen on development splits of the small
        tables (benchmarks/README.md, "Issue 17, session 21"); spike-and-slab gates
        wherever an option needs input PIPs (`screen=True`) or says no input gates."""
        if self.screen or not self.input_gates:
            return GATES_FAMILY
        return AUTO_FAMILY[self._task]

    def _check_params(self) -> str:
        family = self._auto_family() if self.family == FAMILY_AUTO else self.family
        valid = [FAMILY_AUTO, *(f for f in families() if not get_family(f).builders)]
        if family not in valid:
            raise ValueError(f"unknown family {self.family!r}; valid: {valid}")
        hidden = list(self.hidden_layer_sizes)
        if any(not isinstance(h, int | np.integer) or h < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {hidden}")
        if not (self.epochs == "auto" or _is_int(self.epochs, 0)):
            raise ValueError(f"epochs must be 'auto' or an int >= 0, got {self.epochs!r}")
        if not (self.batch_size == "auto" or _is_int(self.batch_size, 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        if not _is_int(self.kl_warmup_steps, 0):
            raise ValueError(f"kl_warmup_steps must be an int >= 0, got {self.kl_warmup_steps!r}")
        if not (isinstance(self.gate_lr_multiplier, int | float) and self.gate_lr_multiplier > 0):
            raise ValueError(
                f"gate_lr_multiplier must be a number > 0, got {self.gate_lr_multiplier!r}"
            )
        for name in (
            "samples",
            "screen_epochs",
            "min_steps",
            "max_steps",
            "patience",
            "refit_steps",
        ):
            value = getattr(self, name)
            if not _is_int(value, 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (self.n_init == "auto" or _is_int(self.n_init, 1)):
            raise ValueError(f"n_init must be 'auto' or an int >= 1, got {self.n_init!r}")
        if not isinstance(self.early_stopping, bool | np.bool_):
            raise ValueError(f"early_stopping must be True or False, got {self.early_stopping!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        if not (
            self.kl_weight == "auto"
            or (isinstance(self.kl_weight, int | float) and not isinstance(self.kl_weight, bool)
                and self.kl_weight >= 0)
        ):  # fmt: skip
            raise ValueError(f"kl_weight must be 'auto' or a number >= 0, got {self.kl_weight!r}")
        if not (self.refit == "auto" or isinstance(self.refit, bool | np.bool_)):
            raise ValueError(f"refit must be 'auto', True or False, got {self.refit!r}")
        corr = self.refit_correlation
        if corr not in (None, "auto") and not (
            isinstance(corr, int | float) and not isinstance(corr, bool) and 0 <= corr < 1
        ):
            raise ValueError(f"refit_correlation must be 'auto', None or in [0, 1), got {corr!r}")
        if self.refit_family not in valid:
            raise ValueError(f"unknown refit_family {self.refit_family!r}; valid: {valid}")
        if self.monitor not in MONITORS:
            raise ValueError(f"unknown monitor {self.monitor!r}; valid: {list(MONITORS)}")
        if self.predict_mode not in MODES:
            raise ValueError(f"unknown predict_mode {self.predict_mode!r}; valid: {list(MODES)}")
        return family

    def _build(self, family: str, n_in: int, n_out: int, input_gates: bool) -> nn.Module:
        """The MLP of `family` with the estimator's options that the family takes."""
        fam = get_family(family)
        prior = {"scale": self.prior_scale, "slab_scale": self.slab_scale}
        if self.prior_inclusion is not None:
            prior["prior_inclusion"] = self.prior_inclusion
        if self.input_prior_inclusion is not None:
            prior["input_prior_inclusion"] = self.input_prior_inclusion
        prior = {k: v for k, v in prior.items() if k in fam.prior_keys}
        layer = {
            "gate_init": self.gate_init,
            "input_gates": input_gates,
            "mean_gates": MEAN_GATES,
            "scale_on": "in",  # group Sparse VD: a log-uniform scale per input column
        }
        options = {k: v for k, v in layer.items() if fam.takes(k)}
        options.update(fam.prior_options(prior))
        hidden = [int(h) for h in self.hidden_layer_sizes]
        return mlp(n_in, hidden, n_out, activation=self.activation, family=family, **options)

    def _inputs(self, X: Any, reset: bool) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        if reset:
            if self.standardize:
                self.x_mean_, scale = _mean_std(X)
            else:
                self.x_mean_, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
            self.x_scale_ = np.where(scale > 0, scale, 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (X - self.x_mean_) / self.x_scale_
        if not np.isfinite(z).all() or np.abs(z).max(initial=0.0) > _MAX_FLOAT32:
            raise ValueError(
                "X, standardised with the training statistics, overflows float32 (values far "
                "beyond the training range); rescale X"
            )
        return torch.tensor(z, dtype=torch.float32)

    # -- training ------------------------------------------------------------------------
    def _fit(self, X: Any, targets: torch.Tensor, n_out: int, likelihood: Any) -> None:
        family = self._check_params()
        x = self._inputs(X, reset=True)
        self.family_ = family
        self.kl_weight_ = auto_kl_weight(len(x), self.kl_weight, family)
        trained = self._best_start(family, x, targets, n_out, likelihood)
        seed = self.seed_
        self.model_, self.likelihood_ = trained.model, trained.likelihood
        self.history_, self.best_epoch_ = trained.history, trained.best_epoch
        self.n_iter_ = len(self.history_)
        self.n_steps_ = self.n_iter_ * trained.budget.steps_per_epoch
        self.feature_importances_, self.importance_kind_ = self._importances()
        support = self._decide_support()
        self.screen_ = (
            self._screen(x, targets, self.likelihood_, seed, support) if self.screen else None
        )
        if self.screen_ is not None:
            support[self.screen_.added] = True
        self.support_ = support
        self.n_features_selected_ = int(support.sum())
        self.refit_model_ = self.refit_likelihood_ = self.refit_history_ = None
        self.refit_columns_ = self.refit_family_ = self.refit_correlation_ = None
        if auto_refit(self.refit, family):  # relaxed: the kept columns, no input gates
            self.refit_family_ = self._auto_refit_family(family)
            self.refit_correlation_ = self._auto_refit_correlation()
            self.refit_columns_ = self._refit_columns(x, support, self.refit_correlation_)
            relaxed = self._refit(x, targets, n_out, likelihood, self.refit_columns_)
            self.refit_model_, self.refit_likelihood_ = relaxed.model, relaxed.likelihood
            self.refit_history_ = relaxed.history
        if self.predict_mode == "mean":
            self._warn_if_constant(x)

    def _best_start(
        self, family: str, x: torch.Tensor, targets: torch.Tensor, n_out: int, likelihood: Any
    ) -> _Trained:
        """The selection network of the best of `n_init` random starts by `restart_score`;
        sets `seed_` (its seed, which the refit and predictions use), `n_init_`,
        `init_scores_` and `best_init_`. With one start, the fit of earlier versions."""
        n_init = AUTO_N_INIT[self._task] if self.n_init == "auto" else int(self.n_init)
        rng = check_random_state(self.random_state)
        seeds = [int(rng.randint(2**31 - 1)) for _ in range(n_init)]
        self._split_seed = seeds[0]  # every start (and the refit) holds out the same rows
        best, scores = None, []
        for start, seed in enumerate(seeds):
            self.seed_ = seed
            trained = self._train(
                family, self.input_gates, x, targets, n_out, make_likelihood(likelihood),
                self.kl_weight_,
            )  # fmt: skip
            scores.append(restart_score(trained.history, trained.best_epoch, self.monitor))
            if best is None or scores[-1] > scores[self.best_init_]:
                best, self.best_init_ = trained, start  # the losers are dropped: one network kept
        self.n_init_, self.init_scores_ = n_init, scores
        self.seed_ = seeds[self.best_init_]
        assert best is not None
        return best

    @staticmethod
    def _refit_columns(
        x: torch.Tensor, support: np.ndarray, correlation: float | None
    ) -> np.ndarray:
        """The kept columns and, with a `correlation`, their proxies: every column whose
        absolute correlation with a kept one (training rows) exceeds it. The posterior keeps
        one column of a correlated group; the predictor averages the group's noise."""
        columns = support.copy()
        if correlation is None or not support.any():
            return columns
        z = x.double().numpy()
        z = z - z.mean(0)
        norm = np.linalg.norm(z, axis=0)
        z = z / np.where(norm > 0, norm, 1.0)  # a constant column correlates with nothing
        r = np.abs(z[:, support].T @ z)  # kept x all: no p x p matrix on wide tables
        return columns | (r > float(correlation)).any(0)

    def _refit(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        n_out: int,
        likelihood: Any,
        columns: np.ndarray,
    ) -> _Trained:
        """The relaxed network of `refit_family_`: `columns` only, no input gates,
        `refit_steps` steps."""
        fresh = make_likelihood(Gaussian() if isinstance(likelihood, Gaussian) else likelihood)
        return self._train(
            self.refit_family_, False, x[:, torch.as_tensor(columns)], targets, n_out, fresh,
            self.kl_weight_, int(self.refit_steps),
        )  # fmt: skip

    def _train(
        self,
        family: str,
        input_gates: bool,
        x: torch.Tensor,
        targets: torch.Tensor,
        n_out: int,
        likelihood: Any,
        kl_weight: float,
        max_steps: int | None = None,
    ) -> _Trained:
        """One network of `family` trained on (x, targets) for the step budget."""
        seed = self.seed_
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self._build(family, x.shape[1], n_out, input_gates)
        val = self._validation_mask(targets, self._split_seed)
        train = (x, targets) if val is None else (x[~val], targets[~val])
        batch_size = auto_batch_size(len(train[0]), self.batch_size)
        least, most = self._min_steps(), int(self.max_steps)
        if max_steps is not None:  # the refit's own budget
            least, most = min(least, max_steps), max_steps
        budget = step_budget(len(train[0]), batch_size, self.epochs, least, most)
        stopper, records = None, []
        if val is not None:
            stopper = EarlyStopping(
                model, likelihood, (x[val], targets[val]), self.monitor,
                budget.steps_per_epoch, max(self._min_steps(), int(self.kl_warmup_steps)),
                int(self.patience), mode=self.predict_mode, samples=int(self.samples), seed=seed,
            )  # fmt: skip
        with contextlib.suppress(StopTraining):  # early stopping ended it; records below
            records = fit(
                model,
                train,
                likelihood=likelihood,
                epochs=budget.epochs,
                batch_size=batch_size,
                lr=self.lr,
                lr_schedule="constant",  # the step budget and rates were tuned at a fixed rate
                lr_multipliers=self._gate_lr(model),
                kl_weight=kl_weight,
                kl_warmup_epochs=min(int(self.kl_warmup_steps), budget.steps // 2)
                / budget.steps_per_epoch,
                dataset_size=len(train[0]),
                seed=seed,
                progress=bool(self.verbose),
                callbacks=() if stopper is None else (stopper,),
            ).epochs
        if stopper is None:
            return _Trained(model, likelihood, records, None, budget)
        stopper.restore()
        return _Trained(model, likelihood, stopper.records, stopper.best_epoch, budget)

    def _warn_if_constant(self, x: torch.Tensor) -> None:
        """Warn when the posterior-mean network gives every training row the same output."""
        model, likelihood, columns = self._predictor()
        x = x if columns is None else x[:, columns]
        pred = predict(model, x, mode="mean", likelihood=likelihood, seed=self.seed_)
        out = pred.probs if hasattr(pred, "probs") else pred.mean
        if len(x) > 1 and float(out.std(0).max()) < CONSTANT_TOL:
            warnings.warn(
                "the posterior-mean network (predict_mode='mean') gives every training row "
                "the same prediction: the posterior has closed every path from the inputs to "
                "the output. Use predict_mode='mc' (Monte Carlo over the posterior), or more "
                "rows or optimiser steps (max_steps), or a smaller kl_weight.",
                UserWarning,
                stacklevel=3,
            )

    def _gate_lr(self, model: nn.Module) -> dict[str, float]:
        """`fit`'s lr_multipliers: the gate logits at `gate_lr_multiplier` (families with gates)."""
        gated = any(name.endswith(GATE_SUFFIX) for name, _ in model.named_parameters())
        return {GATE_SUFFIX: float(self.gate_lr_multiplier)} if gated else {}

    def _min_steps(self) -> int:
        """`min_steps` applies to epochs="auto"; an explicit epoch count is taken literally."""
        return int(self.min_steps) if self.epochs == "auto" else 0

    def _validation_mask(self, targets: torch.Tensor, seed: int) -> torch.Tensor | None:
        """Rows carved from the training rows for early stopping, or None."""
        n = len(targets)
        if not self.early_stopping:
            return None
        labels = targets.numpy() if targets.dtype == torch.long else None
        mask = validation_rows(n, float(self.validation_fraction), seed, labels)
        return torch.as_tensor(mask)

    def _screen(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        likelihood: Any,
        seed: int,
        support: np.ndarray,
    ) -> ScreenResult | None:
        """The evidence screen of the features the PIPs left out (`bayesprune.screen`)."""
        if self.importance_kind_ != "pip":
            raise ValueError(
                "screen=True starts from input PIPs: use family='spike_slab' with input_gates=True"
            )
        selected = np.flatnonzero(support).tolist()
        if len(selected) == x.shape[1]:
            return None  # every feature is in: nothing to screen
        kind = "gaussian" if isinstance(likelihood, Gaussian) else "categorical"
        hidden = [int(h) for h in self.hidden_layer_sizes]
        return screen_features(
            (x, targets), selected, likelihood=kind, hidden=hidden, epochs=int(self.screen_epochs),
            activation=self.activation, seed=seed,
        )  # fmt: skip

    def _importances(self) -> tuple[np.ndarray, str]:
        """Input PIPs (gates), else each input scale's signal share 1 / (1 + α) (group
        Sparse VD), else the relative norm of each input's outgoing weights."""
        for kind in ("pip", "log_alpha"):
            with contextlib.suppress(ValueError):
                (first_layer,) = input_scores(self.model_, kind).values()
                score = first_layer.double().cpu().numpy()
                if kind == "pip":
                    return score, kind
                return 1.0 / (1.0 + np.exp(-score)), SCALE_KIND  # score is -log α
        norm = next(iter(input_scores(self.model_, "norm").values())).double().cpu().numpy()
        top = norm.max() if norm.size and norm.max() > 0 else 1.0
        return norm / top, "norm"

    def _predict(self, X: Any) -> Any:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        x = self._inputs(X, reset=False)
        model, likelihood, columns = self._predictor()
        x = x if columns is None else x[:, columns]
        mode, samples = self.predict_mode, int(self.samples)
        return predict(model, x, samples=samples, mode=mode, likelihood=likelihood, seed=self.seed_)

    def _predictor(self) -> tuple[nn.Module, Any, torch.Tensor | None]:
        """The network `predict` uses, its likelihood, and the input columns it reads
        (the refit network reads `refit_columns_`; None: every column)."""
        if self.refit_model_ is None:
            return self.model_, self.likelihood_, None
        return self.refit_model_, self.refit_likelihood_, torch.as_tensor(self.refit_columns_)

    # -- feature selection (SelectorMixin gives get_support, transform, ...) ----------------
    def _pip_mask(self) -> np.ndarray:
        cut = self.selection_threshold
        if cut is None and self.importance_kind_ == SCALE_KIND:
            cut = 1.0 / (1.0 + math.exp(SCALE_LOG_ALPHA_CUT[self._task]))
        elif cut is None:
            cut = DEFAULT_THRESHOLDS[self.importance_kind_]
        imp = self.feature_importances_
        return imp >= cut if self.importance_kind_ == "norm" else imp > cut

    def _decide_support(self) -> np.ndarray:
        """The threshold rule, never an empty selection in silence (see the module doc)."""
        mask = self._pip_mask()
        imp, p = self.feature_importances_, len(self.feature_importances_)
        kind = IMPORTANCE_NAMES[self.importance_kind_]
        if not mask.any():
            mask = fallback_support(imp)
            warnings.warn(
                f"every input was left out (largest {kind} {imp.max():.3g} is below the "
                f"selection threshold): the prior outweighed the likelihood on these "
                f"{p} inputs. Falling back to the expected-size rule, the "
                f"{int(mask.sum())} input(s) with the highest {kind}s. To change it: more "
                "rows or optimiser steps (max_steps), a smaller kl_weight, a larger "
                "prior_inclusion, or a lower selection_threshold.",
                UserWarning,
                stacklevel=3,
            )
        elif mask.all() and p > 1:
            warnings.warn(
                f"every one of the {p} inputs was kept (smallest {kind} {imp.min():.3g}): "
                "either all of them matter, or training was too short for the gates to "
                "close (with explicit epochs try epochs='auto', else raise max_steps). "
                "Keeping every input.",
                UserWarning,
                stacklevel=3,
            )
        return mask

    def _get_support_mask(self) -> np.ndarray:
        """The inputs the posterior keeps (or the fallback), plus those the screen added."""
        check_is_fitted(self)
        return self.support_.copy()


class BayesianMLPClassifier(ClassifierMixin, _BayesianMLP):
    """A Bayesian MLP classifier (spike-and-slab by default) with input-feature PIPs.

    Parameters: `hidden_layer_sizes`; `family` ("auto" = "spike_slab" for a classifier,
    "sparse_vd_group" for a regressor; also "gaussian", "spike_slab_edge", "sparse_vd",
    "sparse_vd_group" (a log-uniform scale per input column: the selection reads each
    scale's log α, `kl_weight="auto"` is 1.0 and `refit="auto"` False for it),
    "deterministic"); `input_gates` (spike-and-slab: a PIP per input feature);
    `epochs`, `batch_size`, `lr`, `kl_weight` (as in `bayesprune.fit`); the
    data-dependent training defaults `epochs="auto"` (`max_steps` optimiser steps, at
    least `min_steps`), `batch_size="auto"` (the whole table up to 1,024 rows),
    `kl_warmup_steps` (the KL's weight rises from 0 to 1 over these steps, at most half
    of them), `gate_lr_multiplier` (the gate logits' learning rate over `lr`) and
    `early_stopping` (off; with True: `validation_fraction`, `patience`, `monitor`),
    the KL weight by the rows (`kl_weight="auto"`: 0.7, a tempered KL, below 1,000
    training rows, the full KL from there) and N(0, 2²) slabs (`slab_scale=2`), all
    chosen on development splits (docs/spike_slab.md); priors `prior_scale`
    (Gaussian), `slab_scale`, `prior_inclusion` (hidden units),
    `input_prior_inclusion` (default 1 / (p + 1)), `gate_init` (spike-and-slab);
    `samples` and `predict_mode` for prediction ("mc": Monte Carlo; "mean": one pass of
    the posterior-mean network with every gate at its PIP, cheaper, worse on the
    smallest tables);
    `selection_threshold` for `get_support`; `screen` (and `screen_epochs`): also test
    the left-out features by their evidence gain; `refit` (and `refit_steps`): predict
    with a network retrained on the kept columns ("auto": every family but
    "sparse_vd_group"; `refit_steps` steps with epochs="auto", an explicit `epochs`
    applies to both networks) of `refit_family` ("auto": a classifier's spike-and-slab
    selection is refitted as a mean-field "gaussian" MLP, any other selection as its own
    family) and on every column correlated with a kept one above `refit_correlation`
    ("auto": 0.4 for a refit network without gates, else None, the kept columns only);
    `standardize` the inputs; `n_init`, the random starts of the selection network
    ("auto": 1 for a classifier, 3 for a regressor), of which the one with the best
    ELBO is kept (lowest mean training loss over its last epochs; with early stopping,
    the best validation `monitor`);
    `random_state`; `verbose` shows a progress bar.

    Fitted attributes: `classes_`, `model_` (the torch network), `likelihood_`,
    `history_` (per-epoch records), `n_iter_` (epochs), `n_steps_`, `best_epoch_`
    (early stopping), `feature_importances_`, `importance_kind_` ("pip"; "scale":
    1 / (1 + α) of each input's scale, kept above 1 / (1 + e^cut), i.e. log α < cut, −2
    for a classifier and −3 for a regressor; or
    "norm"),
    `support_`, `n_features_selected_`, `screen_` (a `ScreenResult`, or None),
    `refit_model_`, `refit_likelihood_`, `refit_history_`, `refit_columns_` (the columns
    the refit network reads; None with `refit=False`), `refit_family_`,
    `refit_correlation_` (what the refit used; None without one),
    `kl_weight_` (the KL weight used), `n_init_`, `init_scores_` (each start's score,
    larger is better: its ELBO per row, or its validation `monitor` signed so),
    `best_init_` (the start kept), `seed_` (its seed),
    `n_features_in_`, `x_mean_`, `x_scale_`. See the module
    docstring for the estimator checks that do not apply and why.
    """

    def fit(self, X: Any, y: Any) -> BayesianMLPClassifier:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        targets = torch.as_tensor(encoded.reshape(-1), dtype=torch.long)
        self._fit(X, targets, max(len(self.classes_), 1), "categorical")
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior predictive class probabilities (Monte-Carlo mean, or the mean network)."""
        return self._predict(X).probs.numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def predict(self, X: Any) -> np.ndarray:
        probs = self.predict_proba(X)  # checks fitted first
        return self.classes_[np.argmax(probs, axis=1)]


class BayesianMLPRegressor(RegressorMixin, _BayesianMLP):
    """A Bayesian MLP regressor with learned Gaussian noise and input-feature selection.

    Parameters and fitted attributes as `BayesianMLPClassifier` (no `classes_`;
    `y_mean_`, `y_scale_` instead), except `family="auto"`: group Sparse VD, a
    log-uniform scale per input column (`importance_kind_ == "scale"`, no refit, the full
    KL; a column is kept at log α < −3), which on the development splits of every small
    regression table predicted as well as or better than the spike-and-slab gates and
    found more true columns; the
    gates (input PIPs) with `screen=True` or `input_gates=False`, or with
    `family="spike_slab"`. `predict(X, return_std=True)` also returns the predictive
    standard deviation (aleatoric + epistemic), in the units of y.
    """

    _task = "regression"

    def fit(self, X: Any, y: Any) -> BayesianMLPRegressor:
        X, y = validate_data(self, X, y, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        mean, std = _mean_std(y, None) if self.standardize else (0.0, 1.0)
        self.y_mean_, scale = float(mean), float(std)
        self.y_scale_ = scale if scale > 0 and math.isfinite(scale) else 1.0
        targets = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        self._fit(X, targets, 1, Gaussian())
        return self

    def predict(self, X: Any, return_std: bool = False) -> Any:
        pred = self._predict(X)
        mean = pred.mean.numpy() * self.y_scale_ + self.y_mean_
        if return_std:
            return mean, pred.variance.sqrt().numpy() * self.y_scale_
        return mean
