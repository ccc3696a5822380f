"""Network builders.

Each builder makes the plain torch network and converts it with
`bayesprune.nn.convert`, so every variational family gets every architecture for
free; the family's layer factories are told each layer's role (first / hidden /
last), so e.g. `mlp(..., family="spike_slab", input_gates=True)` gates the input
features and the hidden units but not the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from torch import nn

from .nn import DETERMINISTIC, convert, evi_cnn, evi_deep_cnn
from .resnet import resnet
from .vit import vit

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _finish(model: nn.Module, family: str, layer_kwargs: dict[str, Any]) -> nn.Module:
    return convert(model, family, inplace=True, **layer_kwargs)


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: str = "relu",
    family: str = "gaussian",
    **layer_kwargs: Any,
) -> nn.Sequential:
    """A fully connected network in_features → hidden[0] → … → out_features.

    `layer_kwargs` are the family's options (e.g. `prior_scale=0.1` for "gaussian",
    `input_gates=True, gate_init=0.9` for "spike_slab"); see `bayesprune.nn.convert`.
    """
    widths = [in_features, *hidden, out_features]
    if any(w <= 0 for w in widths):
        raise ValueError(f"all layer widths must be positive, got {widths}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(_activation(activation))
    return _finish(nn.Sequential(*layers), family, layer_kwargs)


def lenet_300_100(
    in_features: int = 784, n_classes: int = 10, *, family: str = "gaussian", **layer_kwargs: Any
) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998): flatten → 300 → 100 → classes, ReLU."""
    body = mlp(in_features, [300, 100], n_classes, family=DETERMINISTIC)
    return _finish(nn.Sequential(nn.Flatten(), *body), family, layer_kwargs)


def lenet5_caffe(
    in_channels: int = 1, n_classes: int = 10, *, family: str = "gaussian", **layer_kwargs: Any
) -> nn.Sequential:
    """LeNet-5-Caffe on 28×28 inputs: conv 20 → pool → conv 50 → pool → 500 → classes (5×5)."""
    model = nn.Sequential(
        nn.Conv2d(in_channels, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, n_classes),
    )
    return _finish(model, family, layer_kwargs)


BUILDERS = {"mlp": mlp, "lenet_300_100": lenet_300_100, "lenet5_caffe": lenet5_caffe}
BUILDERS["resnet"] = resnet  # residual graph: compress shrinks it with shrink_graph
BUILDERS["vit"] = vit  # a transformer: MLP units and attention heads go by shrink_graph
BUILDERS.update({"evi_cnn": evi_cnn, "evi_deep_cnn": evi_deep_cnn})  # moment networks


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a named architecture (used by configs and the CLI)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; valid: {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)
