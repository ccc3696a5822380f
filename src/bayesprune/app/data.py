"""The data of a run: the splits a config names, shaped for its model.

Everything is rebuilt from the config: image sets from the fetch cache, tabular
sets and simulations deterministically from their seed; a validation split is
carved from the training rows (`data.val_fraction`), never from the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import IMAGE_SETS, SIMULATED_SETS, TABULAR_SETS, ConfigError, DataConfig


@dataclass
class RunData:
    """The splits of a run, shaped for its model, and what is known about the features."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    task: str  # "classification" | "regression"
    n_outputs: int  # classes, or 1 for regression
    input_shape: tuple[int, ...]  # one example, as the model takes it
    image_shape: tuple[int, ...] | None = None  # (C, H, W) of image data, even when flattened
    feature_names: list[str] = field(default_factory=list)
    true_features: list[int] | None = None  # known truth (simulations, added noise columns)
    y_std: float = 1.0  # regression targets are standardised; RMSE × y_std = original units
    y_mean: float = 0.0  # original y = standardised y × y_std + y_mean
    x_mean: list[float] | None = None  # tabular inputs: raw = standardised × x_scale + x_mean
    x_scale: list[float] | None = None
    class_names: list[str] = field(default_factory=list)  # label j's name (classification)

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)


def _limit(xy: tuple[Tensor, Tensor], limit: int | None) -> tuple[Tensor, Tensor]:
    return xy if limit is None else (xy[0][:limit], xy[1][:limit])


def _split_val(
    xy: tuple[Tensor, Tensor], fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    if fraction <= 0:
        return xy, None
    n = len(xy[0])
    n_val = max(1, round(fraction * n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7))
    val, train = order[:n_val], order[n_val:]
    if len(train) == 0:
        raise ConfigError(
            f"data.val_fraction {fraction} of {n} rows leaves no training row; lower "
            "data.val_fraction or raise data.limit"
        )
    return (xy[0][train], xy[1][train]), (xy[0][val], xy[1][val])


def load_data(config: DataConfig, *, flatten: bool = False) -> RunData:
    """The data a config names; `flatten` gives images as vectors (for an MLP)."""
    from .. import data as bdata

    image_shape = None
    true_features = None
    y_std, y_mean, x_mean, x_scale = 1.0, 0.0, None, None
    if config.name in IMAGE_SETS:
        loader = bdata.load_mnist if config.name == "mnist" else bdata.load_fashion_mnist
        tr = loader("train", config.root, limit=config.limit, seed=config.seed).tensors
        te = loader("test", config.root, limit=config.test_limit, seed=config.seed).tensors
        train, test = (tr[0], tr[1]), (te[0], te[1])
        task, n_out = "classification", 10
        image_shape = tuple(train[0].shape[1:])
        names = [f"px{r}_{c}" for r in range(image_shape[1]) for c in range(image_shape[2])]
        classes = [str(c) for c in range(n_out)]
    else:
        if config.name in TABULAR_SETS:
            tab = bdata.load_tabular(
                config.name, config.noise_columns, test_size=config.test_size, seed=config.seed
            )
            truth_known = config.noise_columns > 0
        else:
            sizes = ("n", "p", "noise")
            kwargs = {k: getattr(config, k) for k in sizes if getattr(config, k) is not None}
            tab = bdata.SIMULATIONS[config.name](
                test_size=config.test_size, seed=config.seed, **kwargs
            )
            truth_known = config.name in SIMULATED_SETS
        train, test = _limit(tab.train, config.limit), _limit(tab.test, config.test_limit)
        task, names, y_std, y_mean = tab.task, tab.feature_names, tab.y_std, tab.y_mean
        x_mean, x_scale = tab.x_mean, tab.x_scale
        n_out = tab.n_classes or 1
        classes = tab.class_names or [str(c) for c in range(n_out if task != "regression" else 0)]
        true_features = list(tab.true_features) if truth_known else None
    train, val = _split_val(train, config.val_fraction, config.seed)
    if flatten and train[0].ndim > 2:
        train, test = _flat(train), _flat(test)
        val = None if val is None else _flat(val)
    return RunData(
        train=train,
        test=test,
        val=val,
        task=task,
        n_outputs=n_out,
        input_shape=tuple(train[0].shape[1:]),
        image_shape=image_shape,
        feature_names=list(names),
        true_features=true_features,
        y_std=y_std,
        y_mean=y_mean,
        x_mean=x_mean,
        x_scale=x_scale,
        class_names=classes,
    )


def _flat(xy: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return xy[0].reshape(len(xy[0]), -1), xy[1]
