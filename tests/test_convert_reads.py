"""`convert` keeps plain the layers whose weights the model reads outside them or shares."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.nn import (
    KeptDeterministicWarning,
    VariationalLayer,
    WeightValuesError,
    layers_read_outside,
)


class FusedBiasAttention(nn.Module):
    """BEiT's attention: q and v biases of their own, qkv's weight read by F.linear."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = FusedBiasAttention(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 16), nn.Linear(16, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(4, 8), Block(), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


def _convert(model: nn.Module, family: str = "gaussian", **options) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KeptDeterministicWarning)
        return bp.convert(model, family, **options)


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_a_weight_read_by_the_forward_stays_plain_and_the_rest_learns(family):
    torch.manual_seed(0)
    with pytest.warns(
        KeptDeterministicWarning,
        match=r"'block.attn.qkv' \(`weight` read in the forward of 'block.attn'\)",
    ):
        model = bp.convert(Tokens(), family)
    assert type(model.block.attn.qkv) is nn.Linear
    kinds = [model.embed, model.block.attn.proj, model.block.fc1, model.block.fc2, model.head]
    assert all(isinstance(m, VariationalLayer) for m in kinds)
    x = torch.randn(64, 5, 4)
    y = (x[:, :, 0].mean(1) > 0).long() + (x[:, :, 1].mean(1) > 0).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x), y) + bp.kl(model) / 10_000
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]  # the plain qkv inside learns with the rest
    assert model.block.attn.qkv.weight.grad is not None


def test_a_kept_reader_still_shrinks_around_it():
    torch.manual_seed(0)
    model = _convert(Tokens()).double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    scores = activation_scores(model, (x,))
    assert "block.fc1" in scores and "block.attn.qkv" not in scores
    result = shrink_graph(model, (x,), prune_units=keep_units(scores, sparsity=0.5), check=True)
    assert result.model.block.fc1.out_features < 16
    assert type(result.model.block.attn.qkv) is nn.Linear


def test_keep_read_false_converts_it_and_the_forward_says_what_to_do():
    model = bp.convert(Tokens(), "gaussian", keep_read=False)
    assert isinstance(model.block.attn.qkv, VariationalLayer)
    with pytest.raises(WeightValuesError, match=r"linear asked.*keep=\[ThatModuleClass\]"):
        model(torch.randn(2, 5, 4))


class DeviceRead(nn.Module):
    """XCiT's positional encoding asks its projection's weight where to put a grid."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.out = nn.Conv2d(2, 4, 1), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        grid = torch.ones(x.shape[0], 2, 3, 3, device=self.proj.weight.device)
        return self.out(self.proj(grid).mean((2, 3)) + x)


def test_a_device_read_keeps_the_layer_plain():
    with pytest.warns(KeptDeterministicWarning, match="'proj'"):
        model = bp.convert(DeviceRead(), "gaussian")
    assert type(model.proj) is nn.Conv2d and isinstance(model.out, VariationalLayer)
    assert model(torch.randn(3, 4)).shape == (3, 2)


class TiedHead(nn.Module):
    """A language model's output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.head = nn.Embedding(10, 6), nn.Linear(6, 6), nn.Linear(6, 10)
        self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def test_a_tied_weight_stays_tied():
    with pytest.warns(
        KeptDeterministicWarning, match=r"'head' \(`weight` is shared with 'embed.weight'\)"
    ):
        model = bp.convert(TiedHead(), "gaussian")
    assert model.head.weight is model.embed.weight
    assert isinstance(model.mix, VariationalLayer)
    untied = bp.convert(TiedHead(), "gaussian", keep_read=False)
    assert isinstance(untied.head, VariationalLayer)  # what keep_read=False asks for


class Untraceable(nn.Module):
    """A forward fx cannot trace (control flow on a value) around a child that reads a
    weight and a read of its own that no trace reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.own = DeviceRead(), nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 1e9:
            return x[:, :2]
        return self.inner(x) + self.own.weight.sum()


def test_reads_are_found_in_the_traceable_children_of_an_untraceable_module():
    reads = layers_read_outside(nn.Sequential(Untraceable()))
    assert set(reads) == {"0.inner.proj"}  # the untraceable module's own read is not seen
    model = _convert(nn.Sequential(Untraceable()))
    assert type(model[0].inner.proj) is nn.Conv2d
    with pytest.raises(WeightValuesError, match="sum asked.*could not trace"):
        model(torch.randn(3, 4))


def test_a_plain_model_has_no_reads_and_a_converted_one_its_kept_read():
    residual = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    assert layers_read_outside(residual) == {}
    assert set(layers_read_outside(_convert(Tokens()))) == {"block.attn.qkv"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptDeterministicWarning)
        bp.convert(residual, "gaussian")  # nothing to say, no warning


def test_a_tied_pair_loses_the_columns_of_the_layer_between_them_and_stays_tied():
    """mix's units are the tied head's columns, which are the table's: all three go
    together (the table's columns zeroed first, for the masked model to equal)."""
    torch.manual_seed(0)
    model = _convert(TiedHead()).double().eval()
    ids = torch.randint(0, 10, (4, 3))
    scores = activation_scores(model, (ids,))
    assert torch.isfinite(scores["mix"]).all()
    result = shrink_graph(model, (ids,), prune_units={"mix": [0, 1]}, check=True)
    assert result.model.mix.out_features == result.model.embed.embedding_dim == 2
    assert result.model.head.in_features == 2 and result.max_abs_difference < 1e-12
    assert result.model.head.weight is result.model.embed.weight


class TiedDeep(nn.Module):
    """A hidden layer before the tied pair, free to shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 6), nn.Linear(6, 10)
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 6)
        self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


def test_a_tied_head_stays_tied_when_an_mlp_before_it_loses_units():
    torch.manual_seed(0)
    model = _convert(TiedDeep()).double().eval()
    ids = torch.randint(0, 10, (4, 3))
    result = shrink_graph(model, (ids,), prune_units={"fc1": [0, 1, 2, 3, 4, 5]}, check=True)
    assert result.model.fc1.out_features == 6 and result.model.head.in_features == 6
    assert result.model.head.weight is result.model.embed.weight  # not a re-made copy


class KeepsFeatures(nn.Module):
    """A forward that appends what it computes to a list attribute (a debugging habit)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.seen = nn.Linear(3, 2), []

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc(x)
        self.seen.append(out)
        return out


def test_convert_leaves_no_trace_proxy_in_a_models_lists():
    model = bp.convert(KeepsFeatures(), "gaussian")
    assert model.seen == []  # convert traced it; nothing of that trace stays behind
    model(torch.randn(4, 3))
    assert len(model.seen) == 1 and isinstance(model.seen[0], Tensor)


class Aliased(nn.Module):
    """T5's `shared` embedding is also its encoder's `embed_tokens`: one module, two names."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(10, 6)
        self.encoder = nn.Module()
        self.encoder.embed_tokens = self.shared
        self.encoder.proj = nn.Linear(6, 6)
        self.alias = self.encoder.proj  # a layer under a second name too
        self.head = nn.Linear(6, 2)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.encoder.embed_tokens(ids)
        return self.head(h + torch.relu(self.alias(h))).mean(1)


def test_a_module_under_two_names_is_not_a_tie(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptDeterministicWarning)
        model = bp.convert(Aliased(), "gaussian").double().eval()
    assert isinstance(model.alias, VariationalLayer) and model.alias is model.encoder.proj
    ids = torch.randint(0, 10, (4, 3))
    scores = activation_scores(model, (ids,))
    assert torch.isfinite(scores["encoder.proj"]).all()  # the stream from the table goes
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    small = result.model
    assert small.shared.embedding_dim == 3 and result.max_abs_difference < 1e-12
    assert small.alias is small.encoder.proj and small.alias.in_features == 3
    path = save_shrunk(small, tmp_path / "aliased.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Aliased(), "gaussian").double())
    assert loaded.alias is loaded.encoder.proj
    with torch.no_grad(), bp.nn.use_posterior_mean(loaded), bp.nn.use_posterior_mean(small):
        torch.testing.assert_close(loaded(ids), small(ids), rtol=0, atol=0)
