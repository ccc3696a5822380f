"""`convert(model, keep=...)`: chosen modules stay deterministic, the rest become Bayesian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.nn import VariationalLayer


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.block(h)
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_kept_modules_stay_plain_and_the_roles_move_inwards(family):
    torch.manual_seed(0)
    plain = Residual()
    model = bp.convert(plain, family, keep=("stem", "head"), init_from_weights=True)
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    assert torch.equal(model.stem.weight, plain.stem.weight)  # a copy, untouched
    bayesian = [m for m in model.modules() if isinstance(m, VariationalLayer)]
    assert len(bayesian) == 2 and isinstance(model.block[0], VariationalLayer)
    x = torch.randn(2, 3, 6, 6)
    with bp.nn.use_posterior_mean(model):
        assert torch.allclose(model(x), plain(x), atol=1e-5)  # means start at the weights


def test_a_block_name_keeps_every_layer_inside_it():
    model = bp.convert(Residual(), "gaussian", keep="block")
    assert type(model.block[0]) is nn.Conv2d and type(model.block[2]) is nn.Conv2d
    assert isinstance(model.stem, VariationalLayer) and isinstance(model.head, VariationalLayer)


def test_a_keep_name_that_matches_nothing_is_one_clear_error():
    with pytest.raises(ValueError, match=r"keep names \['stemm'\] match no .*'stem'"):
        bp.convert(Residual(), "gaussian", keep=["stemm"])
