"""Moment networks: the eVI reference CNN and a deeper diagonal-covariance CNN.

Both are plain `nn.Sequential` stacks of moment layers: `model(x)` takes a
(B, C, H, W) image batch and returns `Moments` of the softmax output, the mean
probabilities (B, K) and their covariance (B, K, K), in one deterministic pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .layers import EVIConv2d, EVILinear
from .ops import EVIFlatten, EVIMaxPool2d, EVISoftmax, make_activation


def _check_family(family: str, builder: str) -> None:
    if family != "evi":
        raise ValueError(
            f"{builder} builds eVI moment networks: family must be 'evi', not {family!r}"
        )


def _pooled(size: int, kernel: int, padding: int, pool: int) -> int:
    conv = size + 2 * padding - kernel + 1
    if conv < pool:
        raise ValueError(
            f"a {kernel}x{kernel} convolution (padding {padding}) and a {pool}x{pool} pool "
            f"do not fit a {size}x{size} input; use larger images or smaller kernels"
        )
    return conv // pool


def evi_cnn(
    n_kernels: int = 32,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    n_classes: int = 10,
    kernel_size: int = 5,
    pool: int = 2,
    activation: str = "relu",
    conv_bias: bool = False,
    covariance: str = "full",
    family: str = "evi",
    **layer_kwargs: Any,
) -> nn.Sequential:
    """The reference network of Carannante et al. (2020).

    image → k×k VALID conv with `n_kernels` kernels → ReLU → max-pool → flatten →
    dense to `n_classes` → softmax. The conv has no bias, as in the authors' code,
    so a kernel whose mean is zero contributes exactly nothing and can be deleted.
    `covariance="full"` keeps each kernel's full covariance over its pooled map
    (factored); `"diag"` keeps variances only. `layer_kwargs` (rho_init,
    regularizer, l1) go to both parametric layers.
    """
    _check_family(family, "evi_cnn")
    if n_kernels < 1 or n_classes < 2:
        raise ValueError(f"need n_kernels >= 1 and n_classes >= 2, got {n_kernels}, {n_classes}")
    side = _pooled(image_size, kernel_size, 0, pool)
    conv = EVIConv2d(
        in_channels, n_kernels, kernel_size, bias=conv_bias, covariance=covariance, **layer_kwargs
    )
    return nn.Sequential(
        conv,
        make_activation(activation),
        EVIMaxPool2d(pool),
        EVIFlatten(),
        EVILinear(n_kernels * side * side, n_classes, covariance="full", **layer_kwargs),
        EVISoftmax(),
    )


def evi_deep_cnn(
    channels: Sequence[int] = (32, 64),
    hidden: Sequence[int] = (128,),
    *,
    in_channels: int = 1,
    image_size: int = 28,
    n_classes: int = 10,
    kernel_size: int = 5,
    pool: int = 2,
    activation: str = "relu",
    family: str = "evi",
    **layer_kwargs: Any,
) -> nn.Sequential:
    """A deeper moment CNN in diagonal mode: [conv (same padding) → act → pool] per entry of
    `channels`, then dense layers of widths `hidden`, then the output layer and softmax.

    Every hidden covariance is diagonal (cost linear in the width); the output
    layer keeps the full K × K covariance for the likelihood.
    """
    _check_family(family, "evi_deep_cnn")
    if not channels or any(c < 1 for c in channels) or any(h < 1 for h in hidden):
        raise ValueError(f"channel and hidden widths must be positive, got {channels}, {hidden}")
    layers: list[nn.Module] = []
    side, width = image_size, in_channels
    padding = kernel_size // 2
    for c in channels:
        layers += [
            EVIConv2d(width, c, kernel_size, padding=padding, covariance="diag", **layer_kwargs),
            make_activation(activation),
            EVIMaxPool2d(pool),
        ]
        side, width = _pooled(side, kernel_size, padding, pool), c
    layers.append(EVIFlatten())
    features = width * side * side
    for h in hidden:
        layers += [
            EVILinear(features, h, covariance="diag", **layer_kwargs),
            make_activation(activation),
        ]
        features = h
    layers += [EVILinear(features, n_classes, covariance="full", **layer_kwargs), EVISoftmax()]
    return nn.Sequential(*layers)
