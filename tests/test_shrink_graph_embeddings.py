"""A language model's stream starts at its embedding tables: their columns are its
channels, sliced with it (and zeroed where `prune_units` drops one, for the LayerNorm
after them); a size the forward reads and never uses does not pin the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import (
    ZeroCountingLayerNorm,
    activation_scores,
    keep_units,
    load_shrunk,
    save_shrunk,
)
from bayesprune.compress.graph import shrink_graph

WIDTH, VOCAB = 12, 40


class PostNormEncoder(nn.Module):
    """BERT's shape: token and position tables summed, a LayerNorm, then blocks that
    add their output to their input and normalise (post-norm), a pooler on the first
    token. `reads` picks what the forward does with the width it reads off the stream."""

    def __init__(self, reads: str = "unpacked", max_norm: float | None = None) -> None:
        super().__init__()
        self.reads = reads
        self.tokens = nn.Embedding(VOCAB, WIDTH, max_norm=max_norm)
        self.places = nn.Embedding(16, WIDTH)
        self.norm0 = nn.LayerNorm(WIDTH)
        self.up, self.down = nn.Linear(WIDTH, 24), nn.Linear(24, WIDTH)
        self.norm1 = nn.LayerNorm(WIDTH)
        self.pool, self.head = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 3)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:  # a branch on an optional argument: fx's symbolic trace fails
            mask = torch.ones_like(ids)
        places = torch.arange(ids.shape[1], device=ids.device)[None]
        h = self.norm0(self.tokens(ids) + self.places(places))
        batch, length, width = h.size()
        if self.reads == "view":
            h = h.view(batch * length, width).view(batch, length, -1)
        elif self.reads == "arithmetic":
            h = h * (width / WIDTH)
        elif self.reads == "new tensor":
            h = h + torch.zeros((1, 1, width))
        elif self.reads == "numpy":
            h = h + torch.as_tensor(np.zeros((1, 1, width)))
        h = self.norm1(h + self.down(torch.relu(self.up(h))))
        h = h * mask[..., None]
        return self.head(torch.tanh(self.pool(h[:, 0])))


def _ids(batch: int = 4, length: int = 9) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(PostNormEncoder(**kwargs), "gaussian").double().eval()


def _run(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(ids)


def test_the_stream_narrows_through_embeddings_and_post_norms_exactly(tmp_path):
    model, ids = _model(), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isfinite(scores["down"]).all()  # the stream is a unit group now
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    shrunk = result.model
    assert shrunk.down.out_features == shrunk.pool.in_features == shrunk.up.in_features == 6
    assert shrunk.tokens.weight.shape == (VOCAB, 6) and shrunk.tokens.embedding_dim == 6
    assert shrunk.places.embedding_dim == 6
    assert isinstance(shrunk.norm0, ZeroCountingLayerNorm)
    assert isinstance(shrunk.norm1, ZeroCountingLayerNorm)
    assert result.max_abs_difference < 1e-10
    assert any("tokens.weight (6)" in n for n in result.notes)
    longer = _ids(2, 13)  # another length: the positions are computed, not constants
    reference = result.reference if hasattr(result, "reference") else None
    assert _run(shrunk, longer).shape == (2, 3)
    if reference is not None:
        torch.testing.assert_close(_run(shrunk, longer), _run(reference, longer))
    path = save_shrunk(shrunk, tmp_path / "encoder.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(PostNormEncoder(), "gaussian").double())
    assert loaded.tokens.embedding_dim == 6
    torch.testing.assert_close(_run(loaded, ids), _run(shrunk, ids), rtol=0, atol=0)


@pytest.mark.parametrize("reads", ["view", "new tensor"])
def test_a_width_that_sizes_the_same_channels_follows_them(reads):
    """`h.view(batch * length, width)`, `h + torch.zeros((1, 1, width))`: the width read
    off h sizes h's own channels (a new tensor of one value for every channel, sliced,
    is what the forward makes with fewer of them)."""
    model, ids = _model(reads=reads), _ids()
    scores = activation_scores(model, (ids,))
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.down.out_features == 6 and result.max_abs_difference < 1e-10
    assert _run(result.model, _ids(2, 13)).shape == (2, 3)


@pytest.mark.parametrize("reads", ["arithmetic", "numpy"])
def test_a_width_the_forward_uses_keeps_the_stream(reads):
    """The width read off the stream goes into arithmetic, or into a tensor made outside
    torch (`np.zeros((1, 1, width))`, a constant of the graph): fewer channels would
    change what the forward computes, or cannot be seen to not, so the stream stays."""
    model, ids = _model(reads=reads), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isinf(scores["down"]).all()
    assert torch.isfinite(scores["up"]).all()  # the hidden units still go


def test_an_embedding_with_max_norm_keeps_its_columns():
    """`max_norm` renormalises each looked-up row over all its columns."""
    model, ids = _model(max_norm=1.0), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isinf(scores["down"]).all()
