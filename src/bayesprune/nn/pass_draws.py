"""One weight draw per Monte-Carlo pass, reused by every batch of the pass.

Monte-Carlo prediction with the shared estimator draws each Gaussian layer's weights
once per forward call, so predicting N rows in batches of B redraws them N/B times per
pass. On CPU that draw (a normal per weight, LeNet-5-Caffe's 430k) costs about as much
as the convolutions of a 256-row batch. Holding one draw for the whole pass samples
one network per pass, as the textbook estimator does: each row's predictive is the
same, and the draws no longer depend on the batch size. With `channels_last=True`
a Gaussian convolution's feature maps are channels-last on CPU, where max pooling runs
about five times faster than in torch's default layout; a forward that calls `.view`
on a feature map refuses that layout, so it is for networks that flatten with
`nn.Flatten` / `torch.flatten` (the package's builders do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .gaussian import BayesConv2d, GradientEstimator, _GaussianLayer


@contextmanager
def one_draw_per_pass(
    model: nn.Module, channels_last: bool = False
) -> Iterator[Callable[[], None]]:
    """Within the block, every sampling Gaussian layer with the shared estimator uses
    the draw made by the yielded `redraw()` (call it before each pass); other layers
    sample as usual. Call under `torch.no_grad()`: the draw is a constant."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, _GaussianLayer) and m.sample and m.estimator == GradientEstimator.SHARED
    ]

    def redraw() -> None:
        with torch.no_grad():
            for layer in layers:
                weight, bias = layer._weight_sample()
                if isinstance(layer, BayesConv2d) and weight.device.type == "cpu":
                    weight = weight.contiguous(memory_format=torch.channels_last)
                layer.__dict__["_pass_draw"] = (weight, bias, channels_last)

    try:
        yield redraw
    finally:
        for layer in layers:
            layer.__dict__.pop("_pass_draw", None)
