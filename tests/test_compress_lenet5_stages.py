"""The annealed KL weight of benchmarks/compress_lenet5.py (`--kl-weight-stages`).

What the LeNet-5 record's annealed runs rest on: the staged regularizer switches β at the
stage boundary inside one `fit` call, and a single stage trains exactly as fit's own
`kl_weight` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bayesprune as bp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compress_lenet5 import StagedKL, kl_stage


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    return x, (x[:, 0] > 0).long()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "sparse_vd")


def test_beta_by_epoch_follows_the_stages() -> None:
    staged = StagedKL([(4.0, 2), (1.0, 3)])
    assert [staged.beta_at(e) for e in range(7)] == [4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_fit_switches_beta_at_the_stage_boundary() -> None:
    staged = StagedKL([(4.0, 1), (1.0, 2)])
    model = _net()
    hist = bp.fit(
        model,
        _data(),
        epochs=3,
        batch_size=16,
        regularizer=staged,
        callbacks=[staged.after_epoch],
        progress=False,
    )
    assert [r["kl_stage_beta"] for r in hist.epochs] == [4.0, 1.0, 1.0]
    assert torch.allclose(staged(model), bp.kl(model))  # β 1 at the end


def test_one_stage_trains_as_fit_kl_weight() -> None:
    staged = StagedKL([(2.0, 2)])
    a, b = _net(), _net()
    common = dict(epochs=2, batch_size=16, seed=3, progress=False)
    bp.fit(a, _data(), regularizer=staged, callbacks=[staged.after_epoch], **common)
    bp.fit(b, _data(), kl_weight=2.0, **common)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


@pytest.mark.parametrize("text", ["4", "4:0", "-1:3", "a:3", "4:x"])
def test_malformed_stage_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="BETA:EPOCHS"):
        kl_stage(text)
