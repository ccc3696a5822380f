"""T5's attention heads: the first layer computes a relative position bias for every
head and hands it on; each layer slices it with its own removed heads (`pruned_heads`,
as Hugging Face's `prune_heads` leaves it), so the table stays whole."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.heads import head_layout


class Attention(nn.Module):
    """T5Attention's forward, without caches: a bias for the original heads, masked."""

    def __init__(self, dim: int = 16, heads: int = 4, bias_table: bool = False) -> None:
        super().__init__()
        self.n_heads, self.key_value_proj_dim = heads, dim // heads
        self.inner_dim = heads * self.key_value_proj_dim
        self.q, self.k = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.v, self.o = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.has_relative_attention_bias = bias_table
        if bias_table:
            self.relative_attention_bias = nn.Embedding(8, heads)
        self.pruned_heads: set[int] = set()

    def split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1, self.n_heads, self.key_value_proj_dim).transpose(1, 2)

    def forward(self, hidden: Tensor, position_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, length = hidden.shape[:2]  # sizes read: the trace must know the shape
        if hidden.dtype == torch.float16:  # a branch on the dtype, as T5's layers have
            hidden = hidden.clamp(-6e4, 6e4)
        q, k, v = self.split(self.q(hidden)), self.split(self.k(hidden)), self.split(self.v(hidden))
        scores = q @ k.transpose(3, 2)
        if position_bias is None:
            distance = torch.arange(length)[None, :] - torch.arange(length)[:, None]
            buckets = distance.clamp(-4, 3) + 4
            position_bias = self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)
        if self.pruned_heads:
            mask = torch.ones(position_bias.shape[1])
            mask[list(self.pruned_heads)] = 0
            masked = position_bias[:, mask.bool()]
        else:
            masked = position_bias
        weights = (scores + masked).softmax(-1)
        out = (weights @ v).transpose(1, 2).contiguous().view(batch, length, self.inner_dim)
        return self.o(out), position_bias


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = Attention(bias_table=True), Attention()
        self.ff, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h, bias = self.first(x)
        h = x + h
        h = h + self.second(h, bias)[0]
        if h.dtype == torch.float16:  # T5's blocks clamp half-precision streams
            h = h.clamp(-6e4, 6e4)
        return self.head(torch.relu(self.ff(h)).mean(1))


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(Encoder(), "gaussian").eval()


def _mean(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(x)


def test_both_layers_heads_are_proven_and_scored(model):
    x = torch.randn(3, 6, 16)
    scores = activation_scores(model, x)
    assert scores["first"].shape == (4,) and scores["second"].shape == (4,)
    assert head_layout(model.first) is not None and head_layout(model.second) is not None


def test_heads_go_and_the_bias_is_sliced_with_their_original_indices(model, tmp_path):
    x = torch.randn(3, 6, 16)
    keep = {"first": torch.tensor([True, False, True, True]), "second": [0, 3]}
    result = shrink_graph(model, x, prune_units=keep)
    first, second = result.model.first, result.model.second
    assert (first.n_heads, second.n_heads, second.inner_dim) == (3, 2, 8)
    assert first.relative_attention_bias.weight.shape == (8, 4)  # the table stays whole
    assert first.pruned_heads == {1} and second.pruned_heads == {1, 2}
    assert result.max_abs_difference < 1e-5
    other = torch.randn(2, 5, 16)  # another length: the bias is recomputed and sliced
    masked = bp.convert(Encoder(), "gaussian").eval()
    masked.load_state_dict(model.state_dict())
    for layer, dropped in (("first", [1]), ("second", [1, 2])):
        rows = [h * 4 + i for h in dropped for i in range(4)]
        with torch.no_grad():
            masked.get_submodule(layer).v.weight_mu[rows] = 0.0
    assert torch.allclose(_mean(result.model, other), _mean(masked, other), atol=1e-5)
    save_shrunk(result.model, tmp_path / "t5ish")
    loaded = load_shrunk(tmp_path / "t5ish", bp.convert(Encoder(), "gaussian"))
    assert loaded.second.pruned_heads == {1, 2} and isinstance(loaded.second.pruned_heads, set)
    assert torch.allclose(_mean(loaded.eval(), other), _mean(result.model, other))


def test_a_second_shrink_records_original_indices(model):
    x = torch.randn(3, 6, 16)
    once = shrink_graph(model, x, prune_units={"second": [0, 2, 3]}).model
    twice = shrink_graph(once, x, prune_units={"second": [0, 2]})  # drops original head 2
    assert twice.model.second.pruned_heads == {1, 2}
    assert twice.max_abs_difference < 1e-5
