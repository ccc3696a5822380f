"""The small interfaces every layer of `bayesprune.nn` offers.

Compression, selection and the app read a layer only through these: its posterior
(`Posterior`), its KL, how to rebuild itself with a subset of its output and input
units (`select`), its deterministic twin, its JSON config (`config` /
`from_config`), and, for layers with inclusion gates, the gate protocol
(`GatedLayer`). They never ask what concrete type a layer is.

Serialization is owned by the layers: every public subclass of `SerializableLayer`
is registered by class name when its class is created, so a model file can be
rebuilt in a fresh process without importing anything but `bayesprune`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..options import Choice
from .weight_metadata import WeightMetadata

Config = dict[str, Any]
_LAYER_TYPES: dict[str, type[nn.Module]] = {}


def _from_json(value: Any) -> Any:
    """JSON lists back to the tuples torch layers expect (kernel sizes, strides…)."""
    return tuple(value) if isinstance(value, list) else value


class SerializableLayer(nn.Module):
    """A layer that describes itself as JSON and rebuilds itself from it.

    `config()` returns the constructor arguments (shapes and options, never tensor
    values: those travel in the state dict); `from_config` builds an untrained layer
    of the right shapes. Public subclasses register themselves by class name.
    `channelwise` layers act on each unit (channel) apart, so `shrink` passes units
    through them (activations, pooling, flatten of moment networks).
    """

    channelwise: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the first class of a name keeps it: a user's subclass that reuses a name of ours
        # must not make our model files load as the user's class
        if not cls.__name__.startswith("_"):
            _LAYER_TYPES.setdefault(cls.__name__, cls)

    def config(self) -> Config:
        """Constructor arguments as JSON-able values (default: none)."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SerializableLayer:
        """An untrained layer of the shapes `config` describes."""
        return cls(**{k: _from_json(v) for k, v in config.items()})


SAME_AS_TORCH = {("timm.layers.linear", "Linear")}
"""Subclasses of a torch.nn layer in other libraries (module, class; not imported here)
whose own `forward` computes what torch's does: timm's Linear (it casts its weights to
the input's dtype under TorchScript only), the classifier of its MobileNets, LCNet…"""


def torch_type(kind: type[nn.Module]) -> type[nn.Module]:
    """The torch.nn class `kind` computes as: its nearest torch.nn base when `kind` keeps
    that class's `forward` (torchvision's video `Conv3DSimple` is an nn.Conv3d with one
    more static method) or is one of `SAME_AS_TORCH`, else `kind` itself (a subclass with
    its own forward computes something else; torch's own subclasses, as
    nn.MultiheadAttention's `out_proj`, are their own type). `convert`, the graph tracer
    and `load_shrunk` read a layer as this. A layer under a parametrization
    (`weight_norm`, `spectral_norm`: torch makes it a `ParametrizedConv1d`…) is its
    layer, whose weight the parametrization computes."""
    if kind.__module__ == "torch.nn.utils.parametrize" and kind.__bases__:
        kind = kind.__bases__[0]
    base = next((c for c in kind.__mro__ if c.__module__.startswith("torch.nn.")), kind)
    same = base.forward is kind.forward or (kind.__module__, kind.__name__) in SAME_AS_TORCH
    return base if same else kind


def conv_geometry(conv: Any) -> Config:
    """A 2-D convolution's shape as JSON-able constructor arguments (`groups` aside: not
    every convolution has it). Shared by the layers' configs and the torch codecs."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": list(conv.kernel_size),
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
    }


def layer_types() -> dict[str, type[nn.Module]]:
    """Every registered `SerializableLayer` class by name (for model files)."""
    return dict(_LAYER_TYPES)


@dataclass(frozen=True)
class Posterior:
    """Posterior summaries of one layer's weights.

    `weight_mean` / `weight_std` have the layer's weight shape (out, in, ...).
    `unit_inclusion` / `input_inclusion` are posterior inclusion probabilities
    per output unit / per input unit for layers that have gates, else None.
    `unit_log_alpha` / `input_log_alpha` are log α of each output / input unit's scale
    for layers with a group prior on that side (family "sparse_vd_group"), else None.
    """

    weight_mean: Tensor
    weight_std: Tensor
    bias_mean: Tensor | None = None
    bias_std: Tensor | None = None
    unit_inclusion: Tensor | None = None
    input_inclusion: Tensor | None = None
    unit_log_alpha: Tensor | None = None
    input_log_alpha: Tensor | None = None


@dataclass(frozen=True)
class Role:
    """Where a layer sits in its network, told to a family's layer factory.

    A family may treat the first layer (its inputs are the features) and the last
    (its outputs are the predictions) differently, e.g. spike-and-slab gates the
    inputs of the first layer and never the outputs of the last.
    """

    first: bool = False
    last: bool = False

    @property
    def hidden(self) -> bool:
        return not (self.first or self.last)


class VariationalLayer(SerializableLayer):
    """Base class of all Bayesian layers: KL, posterior summaries, rebuild, export.

    Attribute `sample` (default True) makes the forward pass stochastic; with it
    off the layer uses the posterior mean (see `use_posterior_mean`).

    Subclasses declare `sliced` (tensor name → (output axis, input axis), None where
    the tensor has no such axis) so that the generic `select` cuts every tensor that
    belongs to a unit together, and supply `_plain_twin`, `_deterministic_weights`
    and `_set_sizes`.
    """

    sample: bool = True
    sliced: ClassVar[dict[str, tuple[int | None, int | None]]] = {}
    lr_schedule: ClassVar[str] = "cosine"
    """The learning-rate schedule `fit(lr_schedule="auto")` uses for a network of these
    layers (a constant rate wins if any layer asks for one)."""
    lr_multipliers: ClassVar[Mapping[str, float]] = {}
    """{own parameter-name suffix: factor}: the learning rate `fit` gives this layer's
    parameters, as a factor of the scheduled rate, unless the caller's `lr_multipliers`
    name them (the caller's keys win)."""
    weight_mask: Tensor | None

    def __getattr__(self, name: str) -> Any:
        """nn.Module's lookup; `weight` / `bias`, which a Bayesian layer does not have as
        parameters, are a `WeightMetadata` of the posterior mean: code outside the layer
        may ask their dtype, device and shape (T5 casts to `wo.weight.dtype`), and any
        computation with them is an error that says why and what to do. A layer without
        a bias answers `bias` with None, as nn.Linear(bias=False) does."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in ("weight", "bias"):
                raise
        if f"{name}_mu" not in self._parameters:
            raise AttributeError(f"{type(self).__name__} has no `{name}`: see posterior()")
        mean = self._parameters[f"{name}_mu"]  # not through __getattr__, which fx wraps
        if mean is None:
            return None
        return WeightMetadata.of(mean, f"this {type(self).__name__}", name)

    def kl(self) -> Tensor:  # pragma: no cover - abstract
        """KL(q ‖ p) of this layer, summed over all its parameters (never averaged)."""
        raise NotImplementedError

    def posterior(self) -> Posterior:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_weight_mask(self, mask: Tensor | None) -> None:  # pragma: no cover - abstract
        """Fix a 0/1 mask on the weights (pruned weights leave the output and the KL)."""
        raise NotImplementedError

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None:
        """Add a constant input's contribution (per output unit) to the bias, in place.

        `shrink` uses it when it removes an input unit that feeds a constant: the
        contribution w·c has mean `mean` and, for a random w, variance `var`.
        Layers that cannot do it raise NotImplementedError and keep such units.
        """
        raise NotImplementedError

    @property
    def merges_input_columns(self) -> bool:
        """Whether `merge_input_columns` is exact for this layer (its weights are
        independent per entry, with no gate or scale shared by an input column)."""
        return False

    def merge_input_columns(self, into: int, ratios: Tensor) -> None:
        """Carry the contribution of constant input columns on column `into`, in place.

        The inputs j with `ratios[j]` ≠ 0 are constants c_j with ratios[j] = c_j / c_into
        (ratios[into] = 1): column `into` becomes Σ_j ratios[j] · column j (variances add
        with ratios[j]²), so the other columns can be removed. `shrink_graph` uses it for
        constants it cannot fold into a bias (`compress.graph_merge`).
        """
        raise NotImplementedError

    # -- shapes and twins of the subclass ---------------------------------------------
    def _plain_twin(self) -> nn.Module:  # pragma: no cover - abstract
        """An untrained plain torch layer of the same shape (nn.Linear / nn.Conv1d / 2d / 3d)."""
        raise NotImplementedError

    def _deterministic_weights(self) -> tuple[Tensor, Tensor | None]:  # pragma: no cover
        """Weight and bias of the posterior-mean network."""
        raise NotImplementedError

    def _set_sizes(self, out_units: int, in_units: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _init_config(self) -> Config:  # pragma: no cover - abstract
        """The constructor arguments of this layer (shapes and options)."""
        raise NotImplementedError

    # -- generic: rebuild, export, serialize ----------------------------------------------
    def select(
        self, out_idx: Tensor | None = None, in_idx: Tensor | None = None
    ) -> VariationalLayer:
        """A copy keeping output units `out_idx` and input units `in_idx` (posterior kept).

        Every tensor named in `sliced` is cut along its unit axes, so a unit's mean,
        scale, gate and mask leave together.
        """
        if getattr(self, "groups", 1) != 1 and in_idx is not None:
            raise NotImplementedError("selecting input channels of a grouped convolution")
        weight = self.weight_mu
        idx = {
            0: torch.arange(weight.shape[0]) if out_idx is None else out_idx,
            1: torch.arange(weight.shape[1]) if in_idx is None else in_idx,
        }
        idx = {
            k: torch.as_tensor(v, dtype=torch.long, device=weight.device) for k, v in idx.items()
        }
        new = copy.deepcopy(self)
        for name, axes in self.sliced.items():
            tensor = getattr(self, name, None)
            if tensor is None:
                continue
            cut = tensor.detach()
            for which, axis in enumerate(axes):
                if axis is not None:
                    cut = cut.index_select(axis, idx[which])
            cut = cut.clone()
            if isinstance(tensor, nn.Parameter):
                cut = nn.Parameter(cut, requires_grad=tensor.requires_grad)
            setattr(new, name, cut)
        new._set_sizes(len(idx[0]), len(idx[1]))
        return new

    def to_deterministic(self) -> nn.Module:
        """A plain torch layer holding the posterior mean."""
        weight, bias = self._deterministic_weights()
        with torch.device("meta"):  # no initialisation of weights overwritten below
            plain = self._plain_twin()
        plain = plain.to_empty(device=weight.device).to(weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if bias is not None:
                plain.bias.copy_(bias)
        return plain

    def config(self) -> Config:
        """Constructor arguments plus whether a weight mask is set (its values: state dict)."""
        return {**self._init_config(), "masked": self.weight_mask is not None}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VariationalLayer:
        cfg = {k: _from_json(v) for k, v in config.items()}
        masked = cfg.pop("masked", False)
        layer = cls(**cfg)
        if masked:  # the values come with the state dict
            layer.set_weight_mask(torch.ones_like(layer.weight_mu))
        return layer


class EdgeAggregate(Choice):
    """How an edge-gated layer forms one inclusion probability per unit or input."""

    ANY = "any"  # 1 − Π(1 − φ): the probability that at least one edge is on
    MAX = "max"  # max φ: kept exactly when the median model keeps one of its edges


class GatedLayer(VariationalLayer):
    """The gate protocol: a variational layer whose units, inputs or edges have gates.

    Inclusion probabilities (PIPs) are read per output unit, per input unit and per
    edge (None where the layer has no such gates and cannot aggregate them); gates are
    set from probabilities (warm starts, diagnostics) or pinned on / off and frozen
    (the selected model). `gate_parameter_names` names the gate parameters, e.g. for
    their own learning rate.
    """

    lr_schedule: ClassVar[str] = "constant"  # a decaying rate stops gates before they close

    def unit_inclusion(self, aggregate: EdgeAggregate | str = "any") -> Tensor | None:
        raise NotImplementedError  # pragma: no cover - abstract

    def input_inclusion(self, aggregate: EdgeAggregate | str = "any") -> Tensor | None:
        raise NotImplementedError  # pragma: no cover - abstract

    def edge_inclusion(self) -> Tensor | None:
        """q(z = 1) per weight for edge-gated layers, else None."""
        return None

    def gate_parameter_names(self) -> tuple[str, ...]:
        raise NotImplementedError  # pragma: no cover - abstract

    def prior_inclusions(self) -> dict[str, float]:
        """The prior inclusion probability λ per kind of gate ("units", "inputs", "edges")."""
        raise NotImplementedError  # pragma: no cover - abstract

    def set_inclusion(self, units: Tensor | None = None, inputs: Tensor | None = None) -> None:
        """Set the unit / input gates to the given inclusion probabilities (not frozen)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def pin_gates(self, units: Tensor | None = None, inputs: Tensor | None = None) -> None:
        """Fix every gate on or off and freeze it: the selected model.

        `units` / `inputs` are keep-masks (True = on). Gates they do not cover: unit
        and input gates on; edge gates by their own median rule (on iff φ > 0.5),
        and off wherever their unit or input is dropped.
        """
        raise NotImplementedError  # pragma: no cover - abstract


def gated_layers(model: nn.Module) -> Iterator[tuple[str, GatedLayer]]:
    """(name, layer) for every gated layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, GatedLayer):
            yield name, module


def variational_layers(model: nn.Module) -> Iterator[tuple[str, VariationalLayer]]:
    """(name, layer) for every variational layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, VariationalLayer):
            yield name, module


def kl(model: nn.Module) -> Tensor:
    """Total KL(q ‖ p) of every variational layer in `model`, summed (not averaged).

    The training loss divides it by the data-set size; see `bayesprune.train`.
    """
    total: Tensor | None = None
    for _, layer in variational_layers(model):  # a chain of additions: no stack to undo
        total = layer.kl() if total is None else total + layer.kl()
    return torch.zeros(()) if total is None else total


@contextlib.contextmanager
def use_posterior_mean(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block every variational layer uses its posterior mean (no sampling)."""
    layers = [layer for _, layer in variational_layers(model)]
    previous = [layer.sample for layer in layers]
    for layer in layers:
        layer.sample = not enabled
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.sample = was


@contextlib.contextmanager
def evaluation_pass(model: nn.Module, hooks: Iterable[Any] = ()) -> Iterator[nn.Module]:
    """One pass that reads the network (its activations, shapes, outputs to compare): no
    gradients, eval mode, posterior means. The model's mode comes back and `hooks` (the
    handles of hooks registered for the pass) are removed on exit, error or not."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), use_posterior_mean(model):
            yield model
    finally:
        model.train(was)
        for handle in hooks:
            handle.remove()
