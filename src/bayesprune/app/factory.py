"""The model and the likelihood of a run config, sized for its data.

Both ask the `Family` record of `model.family` (its prior options, the likelihood
"auto" picks); nothing here branches on a family's name.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..likelihoods import Likelihood, make_likelihood
from ..nn import get_family
from .config import ConfigError, RunConfig
from .data import RunData


def _fill_from_data(builder: Any, kwargs: dict[str, Any], data: RunData) -> dict[str, Any]:
    shape = data.input_shape
    known = {
        "in_features": data.n_features,
        "out_features": data.n_outputs,
        "n_classes": data.n_outputs,
        "in_channels": shape[0] if len(shape) == 3 else None,
        "image_size": shape[-1] if len(shape) == 3 else None,
    }
    params = inspect.signature(builder).parameters
    out = dict(kwargs)
    for name, value in known.items():
        if name in params and name not in out and value is not None:
            out[name] = value
    return out


def _memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_size(build: Callable[[], nn.Module], builder_name: str) -> None:
    """Build on the meta device first (no memory), so that a model larger than the
    machine (e.g. `hidden: [1000000, 1000000]`) is one clear error, not an OOM kill."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception:  # a builder that cannot run on meta is built for real
        return
    tensors = [*skeleton.parameters(), *skeleton.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    memory = _memory_bytes()
    if memory is not None and size > memory // 2:
        raise ConfigError(
            f"model: {builder_name!r} with these model.kwargs has "
            f"{sum(t.numel() for t in tensors):,} parameters ({size / 2**30:.1f} GiB), more "
            f"than half of this machine's {memory / 2**30:.1f} GiB before any training "
            "memory; lower model.kwargs (e.g. hidden widths)"
        )


def build_model(config: RunConfig, data: RunData) -> nn.Module:
    """The untrained model of a config, sized for `data`, initialised from `train.seed`."""
    from ..models import BUILDERS

    m = config.model
    family = get_family(m.family)
    builder = BUILDERS[m.builder]
    kwargs = _fill_from_data(builder, m.kwargs, data)
    layer = {**m.layer, **family.prior_options(m.prior)}
    if m.input_gates:
        layer["input_gates"] = True
    with torch.random.fork_rng(devices=[]):
        _check_size(lambda: builder(**kwargs, family=m.family, **layer), m.builder)
        torch.manual_seed(config.train.seed)
        try:
            return builder(**kwargs, family=m.family, **layer)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model: cannot build {m.builder!r} ({m.family}): {err}") from err


def run_likelihood(config: RunConfig, task: str) -> Likelihood:
    """The likelihood of a run ("auto": categorical / gaussian by task, eVI for eVI nets)."""
    name = config.train.likelihood
    if name == "auto":
        by_task = "categorical" if task == "classification" else "gaussian"
        name = get_family(config.model.family).default_likelihood or by_task
    likelihood = make_likelihood(name)
    if likelihood.task != task:
        raise ConfigError(
            f"train.likelihood {name!r} is for {likelihood.task}, but data {config.data.name!r} "
            f"is {task}; use 'auto'"
        )
    return likelihood


def flattens(config: RunConfig) -> bool:
    """Whether the model takes images as vectors (an MLP on an image set)."""
    return config.model.builder == "mlp"


def ood_inputs(config: RunConfig, name: str, split: str, rows: int) -> torch.Tensor:
    """`rows` images of the image set `name` for out-of-distribution scores, shaped like
    the run's inputs: its training split for validation (so the OOD test images stay
    unread until the reported figures), "test" for test."""
    from .. import data as bdata

    loader = bdata.load_mnist if name == "mnist" else bdata.load_fashion_mnist
    x = loader(split, config.data.root, limit=rows, seed=config.data.seed).tensors[0]
    return x.reshape(len(x), -1) if flattens(config) else x
