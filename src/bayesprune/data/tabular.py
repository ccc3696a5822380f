"""Small tabular data sets with known truth about which columns matter.

scikit-learn's bundled sets optionally get pure-noise columns appended, so that
feature selection can be scored: the real columns are `true_features`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split
from torch import Tensor

_LOADERS = {
    "digits": (datasets.load_digits, "classification"),
    "breast_cancer": (datasets.load_breast_cancer, "classification"),
    "wine": (datasets.load_wine, "classification"),
    "diabetes": (datasets.load_diabetes, "regression"),
}


TASKS = ("classification", "regression")


@dataclass
class TabularData:
    """A train/test split with the indices of the columns that truly matter.

    X is float32 (standardised with training statistics unless asked otherwise);
    y is int64 class labels, or float32 targets standardised as (y - y_mean) / y_std
    (multiply an RMSE by `y_std` to get it in the original units). The scaling is kept
    (`x_mean`, `x_scale`, `y_mean`, `y_std`) so that an exported model can take raw rows
    and answer in the original units.
    """

    X_train: Tensor
    X_test: Tensor
    y_train: Tensor
    y_test: Tensor
    task: str
    feature_names: list[str]
    true_features: list[int]
    y_mean: float = 0.0
    y_std: float = 1.0
    info: dict = field(default_factory=dict)
    x_mean: list[float] | None = None  # None: X was not standardised
    x_scale: list[float] | None = None  # raw = standardised × x_scale + x_mean
    class_names: list[str] = field(default_factory=list)  # label j's name (classification)

    @property
    def noise_features(self) -> list[int]:
        truth = set(self.true_features)
        return [j for j in range(self.X_train.shape[1]) if j not in truth]

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_classes(self) -> int | None:
        """Number of classes (labels are 0..n_classes-1); None for regression."""
        if self.task != "classification":
            return None
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """(X_train, y_train), the form `fit` accepts."""
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        return self.X_test, self.y_test


def make_split(
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    true_features: list[int],
    *,
    feature_names: list[str] | None = None,
    test_size: float = 0.25,
    seed: int = 0,
    standardize: bool = True,
    info: dict | None = None,
    class_names: list[str] | None = None,
) -> TabularData:
    """Split (stratified for classification), standardise with training statistics only,
    and convert to tensors."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, p) and y (n,), got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y.astype(np.float64)).all()):
        raise ValueError("X or y contains NaN or inf; drop or impute those rows first")
    stratify = y if task == "classification" else None
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=stratify
    )
    y_mean, y_std = 0.0, 1.0
    x_mean = x_scale = None
    if standardize:
        mu, sd = X_tr.mean(0), X_tr.std(0)
        sd[sd == 0] = 1.0
        X_tr, X_te = (X_tr - mu) / sd, (X_te - mu) / sd
        x_mean, x_scale = mu.tolist(), sd.tolist()
        if task == "regression":
            y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
            y_tr, y_te = (y_tr - y_mean) / y_std, (y_te - y_mean) / y_std
    y_dtype = torch.int64 if task == "classification" else torch.float32
    names = feature_names or [f"x{j}" for j in range(X.shape[1])]
    return TabularData(
        torch.as_tensor(X_tr, dtype=torch.float32),
        torch.as_tensor(X_te, dtype=torch.float32),
        torch.as_tensor(y_tr, dtype=y_dtype),
        torch.as_tensor(y_te, dtype=y_dtype),
        task,
        list(names),
        list(true_features),
        y_mean,
        y_std,
        info or {},
        x_mean,
        x_scale,
        list(class_names or []),
    )


def load_tabular(
    name: str,
    noise_columns: int = 0,
    test_size: float = 0.25,
    seed: int = 0,
    standardize: bool = True,
) -> TabularData:
    """A bundled scikit-learn set (`tabular_names()`), plus `noise_columns` columns appended.

    The noise columns are N(0, 1) draws (seeded by `seed`) placed after the real
    columns, so `true_features` are 0..p-1 and `noise_features` the rest: a known
    truth for scoring feature selection on real data.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown tabular data set {name!r}; valid: {sorted(_LOADERS)}")
    if noise_columns < 0:
        raise ValueError(f"noise_columns must be >= 0, got {noise_columns}")
    loader, task = _LOADERS[name]
    bunch = loader()
    X, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    p = X.shape[1]
    noise = np.random.default_rng(seed + 1).standard_normal((X.shape[0], noise_columns))
    names = [str(n) for n in getattr(bunch, "feature_names", range(p))]
    names += [f"noise{j}" for j in range(noise_columns)]
    labels = getattr(bunch, "target_names", []) if task == "classification" else []
    classes = [str(c) for c in labels]
    return make_split(
        np.hstack([X, noise]),
        y,
        task,
        list(range(p)),
        feature_names=names,
        test_size=test_size,
        seed=seed,
        standardize=standardize,
        info={"name": name, "noise_columns": noise_columns, "seed": seed},
        class_names=classes,
    )


def tabular_names() -> list[str]:
    """Names `load_tabular` accepts."""
    return sorted(_LOADERS)
