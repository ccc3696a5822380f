"""One layer called at every depth (ALBERT shares its transformer layer so): every call
reads the same columns and writes the same units, so its units go in every call."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.adapters import mask_rows
from bayesprune.compress.graph import shrink_graph


class Recurrent(nn.Module):
    """An embedding, then one MLP block with a residual and a LayerNorm, three times."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.depth = depth
        self.embed, self.head = nn.Linear(6, 16), nn.Linear(16, 3)
        self.up, self.down, self.norm = nn.Linear(16, 32), nn.Linear(32, 16), nn.LayerNorm(16)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for _ in range(self.depth):
            h = self.norm(h + self.down(torch.relu(self.up(h))))
        return self.head(h.mean(1))


def _model(family: str = "gaussian") -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(Recurrent(), family).double().eval()


def _x(rows: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(rows, 5, 6, generator=torch.Generator().manual_seed(seed)).double()


def _mean(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(x)


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_a_layer_called_at_every_depth_loses_units_in_every_call(family):
    model, x = _model(family), _x()
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["up"]).all() and torch.isfinite(scores["embed"]).all()
    keep = keep_units(scores, sparsity=0.5)["up"]
    result = shrink_graph(model, x, prune_units={"up": keep})
    assert result.model.up.out_features == 16 and result.model.down.in_features == 16
    assert result.max_abs_difference < 1e-8
    masked = copy.deepcopy(model)
    mask_rows(masked, "up", (~keep).nonzero().flatten().tolist())
    other = _x(3, seed=1)
    torch.testing.assert_close(_mean(result.model, other), _mean(masked, other))


def test_the_shared_stream_narrows_through_every_call():
    model, x = _model(), _x()
    stream = list(range(12))  # every writer of the stream drops the same 4 channels
    result = shrink_graph(model, x, prune_units={"embed": stream, "down": stream})
    assert result.model.embed.out_features == 12
    assert result.model.down.out_features == 12 and result.model.up.in_features == 12
    assert result.model.norm.weight.shape == (12,)
    assert result.max_abs_difference < 1e-8


def test_dead_units_of_a_shared_layer_fold_once():
    """Units with no incoming weights put out relu(b) in every call: one bias shift of
    `down` carries them for all three calls."""
    model, x = _model(), _x()
    with torch.no_grad():
        mask_rows(model, "up", [0, 1, 2, 3])
        model.up.bias_mu[:4] = 0.5  # a constant that the fold must carry
    result = shrink_graph(model, x)
    assert result.model.up.out_features == 28
    assert result.max_abs_difference < 1e-8
    other = _x(2, seed=2)
    torch.testing.assert_close(_mean(result.model, other), _mean(model, other))


class RelativeTable(nn.Module):
    """DeBERTa's pattern: a table of relative positions read whole (`self.rel.weight`),
    normalised, its first rows taken (`[0:T, :]`) and given a batch axis (`unsqueeze`),
    then read by the same key projection as the tokens: the table's columns are the
    stream's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rel = nn.Embedding(30, 16), nn.Embedding(12, 16)
        self.norm, self.key = nn.LayerNorm(16), nn.Linear(16, 16)
        self.up, self.down, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 2)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        table = self.norm(self.rel.weight)[0 : ids.shape[1], :].unsqueeze(0)
        weights = (self.key(h) * self.key(table)).sum(-1, keepdim=True).sigmoid()
        h = h + weights * self.down(torch.relu(self.up(h)))
        return self.head(h.mean(1))


def test_a_table_read_whole_narrows_with_the_stream():
    torch.manual_seed(0)
    model = bp.convert(RelativeTable(), "gaussian").double().eval()
    ids = torch.randint(0, 30, (4, 7), generator=torch.Generator().manual_seed(0))
    scores = activation_scores(model, ids)
    assert torch.isfinite(scores["down"]).all()  # the stream: not pinned by the table
    keep = keep_units(scores, sparsity=0.25)
    result = shrink_graph(model, ids, prune_units=keep)
    assert result.model.rel.embedding_dim == result.model.embed.embedding_dim < 16
    assert result.model.key.in_features == result.model.embed.embedding_dim
    assert result.max_abs_difference < 1e-8
