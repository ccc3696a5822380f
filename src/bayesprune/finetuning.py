"""Fine-tune a pruned (or shrunk) model for a few epochs with its masks held fixed.

Training after compression lives here, beside `fit`, so that `bayesprune.compress`
holds no training code: its schedules receive a fine-tuning step as a callable
(see `compress.self_compress`), and `compress.hold_pruned` keeps pruned weights at zero.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .compress.masks import hold_pruned
from .train import History, fit


def finetune(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    epochs: int = 3,
    lr: float = 1e-4,
    **fit_kwargs: Any,
) -> History:
    """Train `model` in place for `epochs` with `bayesprune.fit`; pruned weights stay pruned.

    `fit_kwargs` go to `fit` (likelihood, batch_size, kl_weight, seed, ...). A small
    learning rate is the default: the network is already trained.
    """
    with hold_pruned(model):
        return fit(model, train, val, epochs=epochs, lr=lr, **fit_kwargs)
