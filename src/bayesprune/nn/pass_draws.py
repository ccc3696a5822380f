"""One weight draw per Monte-Carlo pass, reused by every batch of the pass.

Monte-Carlo prediction with the shared estimator draws each Gaussian layer's weights
once per forward call, so predicting N rows in batches of B redraws them N/B times per
pass. On CPU that draw (a normal per weight, LeNet-5-Caffe's 430k) costs about as much
as the convolutions of a 256-row batch. Holding one draw for the whole pass samples
one network per pass, as the textbook estimator does: each row's predictive is the
same, and the draws no longer depend on the batch size. A convolution's drawn kernel
is stored channels-last on CPU, so its activations are too, where max pooling and
ReLU run about twice as fast as in the default layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .gaussian import BayesConv2d, GradientEstimator, _GaussianLayer


@contextmanager
def one_draw_per_pass(model: nn.Module) -> Iterator[Callable[[], None]]:
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
                layer.__dict__["_pass_draw"] = (weight, bias)

    try:
        yield redraw
    finally:
        for layer in layers:
            layer.__dict__.pop("_pass_draw", None)
