"""Channels-last convolutions in training, where the network provably allows them.

On CPU, torch's convolutions and max pooling run faster in channels-last memory
order than in its default layout (LeNet-5-Caffe training step at batch 128: about
0.88 × for the Gaussian network, 0.78 × for the deterministic one;
benchmarks/results/channels_last_step.md). MNIST's one-channel input cannot carry
that layout (its strides are the same in both), so the switch is made on each 2-d
convolution's output: a forward hook, in place only while `fit` trains, so nothing
reaches parameters, optimiser state, checkpoints or the user's later forward passes.
The values are the same for given weights and noise (noise drawn per pre-activation,
as the local reparameterisation, flipout, Sparse VD and spike-and-slab draw it, fills
channels-last maps in their memory order: equally distributed, other numbers under a
seed). Only a forward that calls `.view` on a feature map would
refuse the layout, so "auto" turns it on only for an `nn.Sequential` (recursively) of
modules whose forward is known to be layout-agnostic, with at least one 2-d convolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .gaussian import _ConvMap, _LinearMap, channels_last_on_cpu

# modules whose forward is elementwise, pools, normalises or flattens with reshape
_AGNOSTIC: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.Flatten,
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
)


def _is_conv2d(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) or (
        isinstance(module, _ConvMap) and module.spatial_dims == 2
    )


def layout_agnostic(model: nn.Module) -> bool:
    """Whether `model` is an nn.Sequential, recursively, of modules whose exact type is
    a known layout-agnostic one (a subclass may override `forward`) or one of the
    package's convolution / linear layers."""
    if type(model) is nn.Sequential:
        return all(layout_agnostic(m) for m in model)
    return type(model) in _AGNOSTIC or isinstance(model, _ConvMap | _LinearMap)


def use_channels_last(option: bool | None, model: nn.Module, device: str | torch.device) -> bool:
    """`fit`'s `channels_last`: True / False as given; None ("auto") only for a
    layout-agnostic Sequential with a 2-d convolution, trained on the CPU."""
    if option is not None:
        if not isinstance(option, bool):
            raise ValueError(f"channels_last must be True, False or None (auto), got {option!r}")
        return option
    return (
        torch.device(device).type == "cpu"
        and layout_agnostic(model)
        and any(_is_conv2d(m) for m in model.modules())
    )


def _channels_last(module: nn.Module, inputs: tuple, out: Tensor) -> Tensor:
    return channels_last_on_cpu(out)


def hook_channels_last(modules: nn.Module | Iterable[nn.Module]) -> list[RemovableHandle]:
    """Make every 2-d convolution among `modules` (a model: all of its modules) return
    its CPU feature maps channels-last, until the returned handles are removed (`fit`
    and `predict` use `channels_last_convs`)."""
    found = modules.modules() if isinstance(modules, nn.Module) else modules
    return [m.register_forward_hook(_channels_last) for m in found if _is_conv2d(m)]


@contextmanager
def channels_last_convs(
    modules: nn.Module | Iterable[nn.Module], on: bool = True
) -> Iterator[None]:
    """Within the block (if `on`), every 2-d convolution among `modules` returns its CPU
    feature maps channels-last; the hooks are gone afterwards."""
    handles = hook_channels_last(modules) if on else []
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
