"""One weight draw per Monte-Carlo pass, reused by every batch of the pass.

Monte-Carlo prediction with the shared estimator draws each Gaussian layer's weights
once per forward call, so predicting N rows in batches of B redraws them N/B times per
pass (on CPU, LeNet-5-Caffe's 430k normals: about 2 ms against 25 ms for the forward
pass of a 256-row batch). Holding one draw for the whole pass samples
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

from torch import nn

from .gaussian import GradientEstimator, _GaussianLayer
from .layout import channels_last_convs


@contextmanager
def one_draw_per_pass(
    model: nn.Module, channels_last: bool = False
) -> Iterator[Callable[[], None]]:
    """Within the block, every sampling Gaussian layer with the shared estimator uses
    the draw made by the yielded `redraw()` (call it before each pass); other layers
    sample as usual. The draw is a constant (made without gradient). `channels_last`:
    those layers' convolutions hand their CPU feature maps on channels-last
    (`nn.layout`, the hooks `fit` uses)."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, _GaussianLayer) and m.sample and m.estimator == GradientEstimator.SHARED
    ]

    def redraw() -> None:
        for layer in layers:
            layer.hold_draw()

    try:
        with channels_last_convs(layers, channels_last):
            yield redraw
    finally:
        for layer in layers:
            layer.release_draw()
