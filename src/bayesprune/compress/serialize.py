"""Architecture specs: every known layer type says how to describe and rebuild itself.

A spec is plain JSON: {"type": "BayesLinear", "config": {...}} per layer and
{"type": "Sequential", "children": [[name, spec], ...]} for containers, so it
captures shrunk widths and names. Tensors travel separately (the state dict in
safetensors); a spec never holds code and loading never unpickles.

The layers of `bayesprune.nn` describe themselves (`config()` / `from_config`,
registered by class name when their class is created: see `nn.base`); this module
holds the codecs of the torch layers they are used with. Other layer types join
with `register_layer(cls, to_config, from_config)`; `from_config` builds a module
with the right shapes (values come from the state dict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..nn import SerializableLayer, layer_types
from ..nn.base import conv_geometry
from .adapters import CONVOLUTIONS, TRANSPOSED, is_frozen_norm, is_same_padding_conv
from .chain import SelectInputs

Config = dict[str, Any]


@dataclass(frozen=True)
class LayerCodec:
    cls: type[nn.Module]
    to_config: Callable[[nn.Module], Config]
    from_config: Callable[[Config], nn.Module]


_CODECS: dict[str, LayerCodec] = {}


def register_layer(
    cls: type[nn.Module],
    to_config: Callable[[nn.Module], Config],
    from_config: Callable[[Config], nn.Module],
) -> None:
    """Teach the serializer a layer type (keyed by its class name)."""
    _CODECS[cls.__name__] = LayerCodec(cls, to_config, from_config)


def registered_layers() -> list[str]:
    """Every layer type a spec may name: torch codecs, `register_layer`, bayesprune's own."""
    return sorted(set(_CODECS) | set(layer_types()))


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _rebuild(cls: type[nn.Module]) -> Callable[[Config], nn.Module]:
    """`cls` built from a config whose JSON lists were tuples (kernel sizes, strides)."""
    return lambda c: cls(**{k: _tuple(v) for k, v in c.items()})


def _simple(cls: type[nn.Module], *attrs: str) -> None:
    """A type rebuilt from attributes of the same name as its constructor arguments."""
    register_layer(
        cls,
        lambda m: {a: getattr(m, a) for a in attrs},
        _rebuild(cls),
    )


for _cls in (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Identity, nn.Mish, nn.Softsign):
    _simple(_cls)
_simple(nn.GELU, "approximate")
_simple(nn.ELU, "alpha")
_simple(nn.LeakyReLU, "negative_slope")
_simple(nn.Softplus, "beta", "threshold")
_simple(nn.Softmax, "dim")
_simple(nn.LogSoftmax, "dim")
_simple(nn.Flatten, "start_dim", "end_dim")
_simple(nn.Dropout, "p")
for _cls in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
    _simple(_cls, "p")
for _cls in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d):
    _simple(_cls, "kernel_size", "stride", "padding", "dilation", "ceil_mode")
for _cls in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d):
    _simple(_cls, "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
for _cls in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d):
    _simple(_cls, "output_size")
for _bn in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    _simple(_bn, "num_features", "eps", "momentum", "affine", "track_running_stats")
register_layer(
    SelectInputs,
    lambda m: {"n": int(m.index.numel()), "dim": m.dim},
    lambda c: SelectInputs(torch.zeros(c["n"], dtype=torch.long), c["dim"]),
)


def _conv_args(m: Any) -> Config:
    return {**conv_geometry(m), "groups": m.groups}


register_layer(
    nn.Linear,
    lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
    },
    lambda c: nn.Linear(**c),
)


for _cls in CONVOLUTIONS:
    register_layer(
        _cls,
        lambda m: {**_conv_args(m), "bias": m.bias is not None, "padding_mode": m.padding_mode},
        _rebuild(_cls),
    )
for _cls in TRANSPOSED:
    register_layer(
        _cls,
        lambda m: {**_conv_args(m), "output_padding": m.output_padding, "bias": m.bias is not None},
        _rebuild(_cls),
    )


def architecture(model: nn.Module) -> Config:
    """The JSON spec of `model` (an nn.Sequential tree of registered layer types)."""
    if type(model) is nn.Sequential:
        return {
            "type": "Sequential",
            "children": [[name, architecture(child)] for name, child in model.named_children()],
        }
    name = type(model).__name__
    if isinstance(model, SerializableLayer) and layer_types().get(name) is type(model):
        return {"type": name, "config": model.config()}
    codec = _CODECS.get(name) or _known_elsewhere(type(model))
    if codec is None or codec.cls is not type(model):
        raise TypeError(
            f"cannot describe {type(model).__name__}: known layer types are "
            f"{registered_layers()} and nn.Sequential; add one with "
            "bayesprune.compress.register_layer(cls, to_config, from_config)"
        )
    return {"type": type(model).__name__, "config": codec.to_config(model)}


def _known_elsewhere(cls: type[nn.Module]) -> LayerCodec | None:
    """The codec of a layer type of another library that the package knows without
    importing it, registered the first time one is described: `adapters.FROZEN_NORMS`
    (torchvision's FrozenBatchNorm2d, what a pretrained detector's backbone normalises
    with) and `adapters.SAME_PADDING_CONVS` (timm's Conv2dSame, which takes nn.Conv2d's
    arguments but `padding_mode`)."""
    if is_frozen_norm(cls):
        register_layer(
            cls,
            lambda m: {"num_features": int(m.weight.numel()), "eps": float(m.eps)},
            lambda c: cls(int(c["num_features"]), eps=float(c["eps"])),
        )
    elif is_same_padding_conv(cls):
        register_layer(cls, lambda m: {**_conv_args(m), "bias": m.bias is not None}, _rebuild(cls))
    else:
        return None
    return _CODECS[cls.__name__]


def build(spec: Config) -> nn.Module:
    """An untrained model of the architecture `spec` (shapes right, values to be loaded)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"not a layer spec: {spec!r}")
    kind = spec["type"]
    if kind == "Sequential":
        seq = nn.Sequential()
        for name, child in spec.get("children", []):
            seq.add_module(str(name), build(child))
        return seq
    own = layer_types().get(kind)
    if own is not None and kind not in _CODECS:
        return own.from_config(dict(spec.get("config", {})))  # type: ignore[attr-defined]
    if kind not in _CODECS:
        raise ValueError(
            f"unknown layer type {kind!r} in the spec; known: {registered_layers()} (register "
            "it with bayesprune.compress.register_layer before loading)"
        )
    return _CODECS[kind].from_config(dict(spec.get("config", {})))
