"""Layer families: one record per family holds everything the rest of the library asks.

A `Family` says how to build its layers from plain torch layers (told each layer's
`Role`), which options its layers and its prior take, which compression score suits
its posterior by default, whether its predictive is one deterministic pass (eVI),
and whether it has gates. `convert`, the builders, the config checks, the compress
policy and the scikit-learn estimators read the record; nothing outside `nn/`
branches on a family's name.

Families register themselves when their module is imported (`import bayesprune`
imports them all); `register_family` adds a user's own.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import nn

from .attention import split_attention as _split_attention
from .base import Role, VariationalLayer, conv_geometry, torch_type
from .linear_twins import linear_twins
from .parameter_reads import layers_read_outside

PLAIN_CONVOLUTIONS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
"""torch's convolutions by number of spatial dims: the layers every conv family twins."""
CONVOLUTIONS: tuple[type[nn.Module], ...] = tuple(PLAIN_CONVOLUTIONS.values())
"""nn.Conv1d / 2d / 3d, for isinstance checks."""

LayerFactory = Callable[[nn.Module, Role, dict[str, Any]], VariationalLayer]
"""(plain layer, its role, the family options) → the Bayesian twin."""

_SHAPE_ARGS = frozenset(
    {
        "self",
        "in_features",
        "out_features",
        "bias",
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    }
)


def keyword_options(*classes: type, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """Constructor keywords of `classes` that are options, not shapes (sorted)."""
    names: set[str] = set()
    for cls in classes:
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(p.name)
    return tuple(sorted(names - _SHAPE_ARGS - set(exclude)))


def plain_layer_args(plain: nn.Module) -> dict[str, Any]:
    """Arguments that rebuild a Bayesian twin of a plain Linear / Conv1d / 2d / 3d layer."""
    if isinstance(plain, CONVOLUTIONS):
        return {
            **conv_geometry(plain),
            "groups": plain.groups,
            "bias": plain.bias is not None,
            "padding_mode": plain.padding_mode,
        }
    return {
        "in_features": plain.in_features,
        "out_features": plain.out_features,
        "bias": plain.bias is not None,
    }


def conv_factories(
    make: Callable[[Any], LayerFactory], *classes: type[nn.Module]
) -> dict[type[nn.Module], LayerFactory]:
    """`{nn.Conv1d: make(classes[0]), ...}`: a family's factories for its convolutions,
    given by number of spatial dims (each class's `spatial_dims`)."""
    return {PLAIN_CONVOLUTIONS[cls.spatial_dims]: make(cls) for cls in classes}  # type: ignore[attr-defined]


def twin_factory(cls: type[VariationalLayer]) -> LayerFactory:
    """A factory that builds `cls` with the plain layer's shape, whatever the role."""

    def build(plain: nn.Module, role: Role, options: dict[str, Any]) -> VariationalLayer:
        return cls(**plain_layer_args(plain), **options)

    return build


def _no_prior(prior: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Family:
    """Everything the library knows about one layer family (see the module docstring).

    `factories` maps plain layer types to their builders; a family without factories
    (eVI, which needs moment activations too) builds its networks with `builders`.
    `layer_options` are the options its factories take (`convert(..., **options)`);
    `prior_keys` the names of its prior (a config's `model.prior`), turned into layer
    options by `prior_options`, which set `prior_layer_options`. `default_score` is
    the compression score "auto" picks, `default_likelihood` the likelihood "auto"
    picks (None: by the task). `deterministic_predictive`: one pass gives the
    predictive (no Monte Carlo).
    """

    name: str
    factories: Mapping[type[nn.Module], LayerFactory] = field(default_factory=dict)
    layer_options: tuple[str, ...] = ()
    prior_keys: tuple[str, ...] = ()
    prior_options: Callable[[Mapping[str, Any]], dict[str, Any]] = _no_prior
    prior_layer_options: tuple[str, ...] = ()
    default_score: str = "snr"
    default_likelihood: str | None = None
    deterministic_predictive: bool = False
    gated: bool = False
    builders: tuple[str, ...] = ()
    description: str = ""

    @property
    def convertible(self) -> bool:
        """Whether `convert` can turn a plain network into this family."""
        return bool(self.factories)

    @property
    def bayesian(self) -> bool:
        return self.name != DETERMINISTIC

    def takes(self, option: str) -> bool:
        """Whether `option` is one of this family's layer options."""
        return option in self.layer_options

    def factory_for(self, module: nn.Module) -> LayerFactory | None:
        """The factory that replaces `module`, or None: the factory of the torch type it
        computes as (`base.torch_type`), so a subclass that keeps torch's `forward`
        (torchvision's `Conv3DSimple`) is replaced as its base; a subclass with its own
        `forward`, and torch's own subclasses (the `out_proj` of nn.MultiheadAttention,
        whose owner reads its `.weight`), stay."""
        return self.factories.get(torch_type(type(module)))


DETERMINISTIC = "deterministic"
_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family; returns it."""
    _FAMILIES[family.name] = family
    return family


def families() -> list[str]:
    """Names of every registered family."""
    return sorted(_FAMILIES)


def get_family(name: str | Family) -> Family:
    """The record of family `name`; a ValueError lists the valid names."""
    if isinstance(name, Family):
        return name
    if name not in _FAMILIES:
        raise ValueError(f"unknown layer family {name!r}; valid families: {families()}")
    return _FAMILIES[name]


register_family(
    Family(
        DETERMINISTIC,
        default_score="magnitude",
        description="plain torch layers (the baseline; magnitude pruning)",
    )
)


def convertible_layers(model: nn.Module, family: Family) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) of every layer `family` can replace, in module order."""
    return [(parent, name, child) for parent, name, child, _ in _named_convertible(model, family)]


def _named_convertible(
    model: nn.Module, family: Family
) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """`convertible_layers` with each layer's qualified name ("layer1.0.conv1")."""
    found = []
    for prefix, parent in model.named_modules():
        for name, child in parent.named_children():
            if family.factory_for(child) is not None:
                found.append((parent, name, child, f"{prefix}.{name}" if prefix else name))
    return found


def _kept(qualified: str, keep: Sequence[str]) -> bool:
    """Whether `qualified` is one of the `keep` names or inside one ("layer4" keeps its convs)."""
    return any(qualified == k or qualified.startswith(k + ".") for k in keep)


def convert(
    model: nn.Module,
    family: str | Family = "gaussian",
    *,
    init_from_weights: bool = False,
    inplace: bool = False,
    keep: Sequence[str | type[nn.Module]] = (),
    split_attention: bool = False,
    keep_read: bool = True,
    example_inputs: Any = None,
    **options: Any,
) -> nn.Module:
    """Return `model` with every nn.Linear / nn.Conv1d / 2d / 3d replaced by a Bayesian twin.

    Works on any `nn.Module`, whatever its `forward`. `keep` names modules (as in
    `model.named_modules()`, e.g. `("conv1", "fc")`, or a block such as `"layer4"`) or
    module types (every module of the type) whose layers stay deterministic; a name or
    type that matches no replaceable layer is an error. With `keep_read=True` a layer whose
    weight the model's own code reads (`F.linear(x, self.qkv.weight, bias)` in timm's BEiT,
    torchvision's Swin) or shares with another module (tied weights) stays deterministic
    too, with a `KeptDeterministicWarning` naming each and why (found by tracing the model
    symbolically, `layers_read_outside`): a Bayesian layer has no fixed weight to read, and
    converting one of two tied modules would untie them. `example_inputs` (as `shrink_graph`
    takes them: a tensor, a tuple, or a mapping of arguments by name) let that trace see reads in a
    forward that branches on shapes (Hugging Face's models). The first and last converted
    layers in module order get the roles "first" and "last" (e.g. spike-and-slab gates the
    first layer's inputs with `input_gates=True` and leaves the last layer's outputs
    ungated).
    `split_attention=True` first replaces every `nn.MultiheadAttention` by
    `bayesprune.nn.MultiheadAttention` (same outputs, four projection layers), whose
    projections are then converted and whose heads `compress.shrink_graph` can delete;
    without it torch's attention stays deterministic and whole. A layer that computes
    `x @ weight + bias` with its weight stored transposed (GPT-2's `Conv1D`) becomes the
    `nn.Linear` it is, and is converted as one (`linear_twins`, proven on random inputs).
    `init_from_weights=True` starts the
    posterior means at the trained weights (a cheap way to make a pretrained network
    Bayesian); `options` go to the family's layer factories (e.g. `prior_scale=0.1`).
    """
    fam = get_family(family)
    if not fam.bayesian:
        model = model if inplace else copy.deepcopy(model)
        return _split_attention(model, inplace=True) if split_attention else model
    if not fam.convertible:
        raise ValueError(
            f"family {fam.name!r} cannot convert plain layers; build its networks with "
            f"{list(fam.builders)}"
        )
    unknown = sorted(set(options) - set(fam.layer_options))
    if unknown:
        raise ValueError(
            f"family {fam.name!r} takes no option(s) {unknown}; valid: {sorted(fam.layer_options)}"
        )
    keep = [keep] if isinstance(keep, str | type) else list(keep)
    model = model if inplace else copy.deepcopy(model)
    if split_attention:
        model = _split_attention(model, inplace=True)
    linear_twins(model)  # GPT-2's Conv1D: a linear layer stored transposed
    keep = _keep_names(model, keep)
    if fam.factory_for(model) is not None and not keep:  # a single layer
        return _twin(model, fam, Role(first=True, last=True), init_from_weights, options)
    named = _named_convertible(model, fam)
    unmatched = [k for k in keep if not any(_kept(q, [k]) for *_, q in named)]
    if unmatched:
        raise ValueError(
            f"keep names {unmatched} match no nn.Linear / nn.Conv1d / 2d / 3d of the model; "
            f"replaceable layers: {[q for *_, q in named][:20]}"
        )
    candidates = [q for *_, q in named if not _kept(q, keep)]
    read = _read_outside(model, candidates, example_inputs) if keep_read else {}
    found = [
        (parent, name, child)
        for parent, name, child, q in named
        if not _kept(q, keep) and q not in read
    ]
    order = list({id(child): child for *_, child in found})  # a layer under two names once
    twins: dict[int, nn.Module] = {}
    for parent, name, child in found:
        if id(child) not in twins:
            i = order.index(id(child))
            role = Role(first=i == 0, last=i == len(order) - 1)
            twins[id(child)] = _twin(child, fam, role, init_from_weights, options)
        setattr(parent, name, twins[id(child)])  # one twin: the alias stays one module
    _transformer_fast_path(model)
    return model


class KeptDeterministicWarning(UserWarning):
    """`convert` left layers deterministic that the model reads or shares outside them."""


def _read_outside(
    model: nn.Module, candidates: list[str], example_inputs: Any = None
) -> dict[str, str]:
    """The layers of `candidates` that `layers_read_outside` finds, with a warning."""
    reads = layers_read_outside(model, example_inputs)
    read = {q: reads[q] for q in candidates if q in reads}
    if read:
        shown = "; ".join(f"{q!r} ({why})" for q, why in list(read.items())[:3])
        more = f" and {len(read) - 3} more" if len(read) > 3 else ""
        warnings.warn(
            f"convert kept {len(read)} layer(s) deterministic whose weights the model reads "
            f"outside them or shares: {shown}{more}. A Bayesian layer has no fixed weight "
            "for such code to read (and converting one of two tied modules would untie "
            "them); pass keep_read=False to convert them anyway",
            KeptDeterministicWarning,
            stacklevel=3,
        )
    return read


def _transformer_fast_path(model: nn.Module) -> None:
    """Switch torch's fused inference path of each nn.TransformerEncoderLayer off where it
    holds a variational layer, and back on where it holds none.

    In eval mode without gradients the layer (and the TransformerEncoder around it) runs
    one C++ kernel that reads `linear1.weight` and the like itself, which a Bayesian layer
    has not: `predict` would fail. `activation_relu_or_gelu` is one of that path's
    conditions and is read nowhere else (the layer's own forward calls `activation`), so
    0 sends the layer through its modules; torch's value (1 for ReLU, 2 for GELU) comes
    back with plain layers (`to_deterministic`), and the fused path with it."""
    for module in model.modules():
        if not isinstance(module, nn.TransformerEncoderLayer):
            continue
        if any(isinstance(m, VariationalLayer) for m in module.modules()):
            module.activation_relu_or_gelu = 0
        else:
            act = module.activation
            relu = act is F.relu or isinstance(act, nn.ReLU)
            gelu = act is F.gelu or isinstance(act, nn.GELU)
            module.activation_relu_or_gelu = 1 if relu else 2 if gelu else 0


def _keep_names(model: nn.Module, keep: list[str | type[nn.Module]]) -> list[str]:
    """`keep` with every module type replaced by the names of the modules of that type."""
    names: list[str] = []
    for k in keep:
        if isinstance(k, str):
            names.append(k)
            continue
        found = [q for q, m in model.named_modules() if isinstance(m, k) and q]
        if not found:
            raise ValueError(f"keep names the type {k.__name__}, which no module of the model is")
        names.extend(found)
    return names


def _twin(
    plain: nn.Module, fam: Family, role: Role, init_from_weights: bool, options: dict[str, Any]
) -> VariationalLayer:
    layer = fam.factory_for(plain)(plain, role, dict(options)).to(plain.weight)  # type: ignore[misc]
    if init_from_weights:
        layer.load_means_from(plain)
    return layer


def to_deterministic(model: nn.Module) -> nn.Module:
    """A plain torch copy of `model`: variational layers hold their posterior means.

    Any other module that offers `torch_twin()` (the eVI moment activations, pooling
    and flatten) is swapped for its torch twin, so the result runs without bayesprune.
    """
    if isinstance(model, VariationalLayer):
        return model.to_deterministic()
    if hasattr(model, "torch_twin"):
        return model.torch_twin()
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, VariationalLayer):
                setattr(parent, name, child.to_deterministic())
            elif hasattr(child, "torch_twin"):
                setattr(parent, name, child.torch_twin())
    _transformer_fast_path(model)
    return model
