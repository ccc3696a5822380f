"""Hugging Face's BERT attention layout: heads scored, removed, saved and loaded."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.adapters import mask_rows
from bayesprune.compress.graph import GraphShrinkError, shrink_graph
from bayesprune.compress.heads import head_count, head_layout


class SelfAttention(nn.Module):
    """BertSelfAttention's forward: the head count and width read from attributes."""

    def __init__(self, dim: int = 16, heads: int = 4, width_from_input: bool = False) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = heads * self.attention_head_size
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.width_from_input = width_from_input

    def split(self, x: Tensor, size: int) -> Tensor:
        return x.view(*x.size()[:-1], self.num_attention_heads, size).permute(0, 2, 1, 3)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> tuple[Tensor]:
        size = self.attention_head_size  # or, in older code, the stream's width per head:
        if self.width_from_input:
            size = hidden.size(-1) // self.num_attention_heads
        q, k, v = (self.split(layer(hidden), size) for layer in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / self.attention_head_size**0.5
        if mask is not None:
            scores = scores + mask
        context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
        return (context.view(*context.size()[:-2], self.all_head_size),)


class SelfOutput(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dense, self.norm = nn.Linear(dim, dim), nn.LayerNorm(dim)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        return self.norm(self.dense(hidden) + residual)


class Attention(nn.Module):
    """BertAttention: the projections in `self`, the output projection in `output`."""

    def __init__(self, width_from_input: bool = False) -> None:
        super().__init__()
        self.self = SelfAttention(width_from_input=width_from_input)
        self.output = SelfOutput()

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> tuple[Tensor]:
        return (self.output(self.self(hidden, mask)[0], hidden),)


class Encoder(nn.Module):
    def __init__(self, width_from_input: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attention = Attention(width_from_input)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.attention(self.embed(x))[0]
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h.mean(1))


def _tokens() -> Tensor:
    return torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model.eval()(x)


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_bert_heads_are_scored_and_removed(family):
    torch.manual_seed(0)
    model = bp.convert(Encoder(), family).double().eval()
    assert head_layout(model.attention) is not None and head_count(model.attention) == 4
    x = _tokens()
    scores = activation_scores(model, x)
    assert scores["attention"].shape == (4,) and torch.isfinite(scores["attention"]).all()
    keep = torch.tensor([True, False, True, False])
    result = shrink_graph(
        model, x, prune_units={"attention": keep, "fc1": keep_units(scores, 0.5)["fc1"]}
    )
    small = result.model.attention
    assert small.self.num_attention_heads == 2 and small.self.all_head_size == 8
    assert small.self.query.out_features == 8 and small.output.dense.in_features == 8
    assert result.heads["attention"] == [0, 2]
    assert result.attributes["attention.self"]["num_attention_heads"] == 2
    assert result.max_abs_difference < 1e-9


def test_a_bert_model_without_heads_saves_and_loads_into_a_fresh_one(tmp_path):
    torch.manual_seed(1)
    model, x = bp.convert(Encoder(), "gaussian").double().eval(), _tokens()
    small = shrink_graph(model, x, prune_units={"attention": [1, 3]}).model
    path = save_shrunk(small, tmp_path / "bert.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Encoder(), "gaussian").double())
    assert loaded.attention.self.num_attention_heads == 2
    torch.testing.assert_close(_out(loaded, x), _out(small, x), rtol=0, atol=0)


def test_a_forward_that_divides_the_stream_among_the_heads_keeps_them():
    model = bp.convert(Encoder(width_from_input=True), "gaussian").double()
    assert head_layout(model.attention) is None  # the probe fails: rows would not split
    scores = activation_scores(model.eval(), _tokens())
    assert "attention" not in scores


class DistilAttention(nn.Module):
    """DistilBERT's attention: query, key, value and a mask passed apart."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.n_heads, self.dim, self.attention_head_size = heads, dim, dim // heads
        self.q_lin, self.k_lin = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_lin, self.out_lin = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor) -> tuple[Tensor]:
        size = self.dim // self.n_heads

        def split(x: Tensor) -> Tensor:
            return x.view(x.shape[0], -1, self.n_heads, size).transpose(1, 2)

        q, k, v = split(self.q_lin(query)), split(self.k_lin(key)), split(self.v_lin(value))
        scores = (q @ k.transpose(2, 3)).masked_fill(mask[:, None, None, :] == 0, -1e9)
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(query.shape[0], -1, self.dim)
        return (self.out_lin(context),)


class DistilEncoder(nn.Module):
    def __init__(self, keys_out: str = "") -> None:
        super().__init__()
        self.embed, self.attention = nn.Linear(6, 16), DistilAttention()
        self.head = nn.Linear(16, 3)
        self.keys_out = keys_out  # "", "heads" (B × T × heads × d) or "flat" (B × T × C)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = self.embed(x)
        mask = torch.ones(x.shape[0], x.shape[1], dtype=torch.long)
        h = h + self.attention(query=h, key=h, value=h, mask=mask)[0]
        logits = self.head(h.mean(1))
        if not self.keys_out:
            return logits
        keys = self.attention.k_lin(h).view(h.shape[0], -1, self.attention.n_heads, 4)
        if self.keys_out == "flat":
            keys = keys.flatten(2)
        return logits, keys  # a cache of keys per head, as a language model returns


def test_heads_of_an_attention_called_with_several_arguments_are_proven_on_its_call():
    torch.manual_seed(2)
    model, x = bp.convert(DistilEncoder(), "gaussian").double().eval(), _tokens()
    assert head_layout(model.attention) is None  # one random tensor cannot call it
    scores = activation_scores(model, x)  # probed on the call the model makes
    assert scores["attention"].shape == (4,)
    result = shrink_graph(model, x, prune_units={"attention": [0, 3]})
    small = result.model.attention
    assert small.n_heads == 2 and small.dim == 8 and small.q_lin.out_features == 8
    assert result.max_abs_difference < 1e-9


def test_an_output_with_an_entry_per_head_narrows_with_the_heads():
    """A cache of keys per head (GPT-2 returns one per layer): the shrunk model's holds
    the kept heads, checked against the masked model's entries of those heads."""
    model, x = bp.convert(DistilEncoder("heads"), "gaussian").double().eval(), _tokens()
    masked = copy.deepcopy(model)
    mask_rows(masked, "attention.v_lin", list(range(4, 12)))  # heads 1 and 2 silenced
    result = shrink_graph(model, x, prune_units={"attention": [0, 3]})
    with torch.no_grad(), bp.nn.use_posterior_mean(masked):
        _, keys = masked(x)
    with torch.no_grad(), bp.nn.use_posterior_mean(result.model):
        _, kept = result.model(x)
    assert kept.shape[2] == 2 and result.max_abs_difference < 1e-9
    torch.testing.assert_close(kept, keys[:, :, [0, 3]])
    assert any("one entry per attention head" in n for n in result.notes)


def test_an_output_that_carries_the_removed_heads_otherwise_is_one_clear_error():
    model, x = bp.convert(DistilEncoder("flat"), "gaussian").double().eval(), _tokens()
    with pytest.raises(GraphShrinkError, match="other shapes than the masked model's"):
        shrink_graph(model, x, prune_units={"attention": [0, 3]})


class EncoderDecoderAttention(nn.Module):
    """BART's and OPT's attention: `q_proj` ... `out_proj`, the heads merged back to the
    width held in `embed_dim` (not bayesprune's MultiheadAttention, same layer names)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = 16, 4, 4
        self.q_proj, self.k_proj = nn.Linear(16, 16), nn.Linear(16, 16)
        self.v_proj, self.out_proj = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, hidden: Tensor) -> tuple[Tensor, None]:
        bsz, length, _ = hidden.size()

        def heads(x: Tensor) -> Tensor:
            return x.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(hidden)), heads(self.k_proj(hidden)), heads(self.v_proj(hidden))
        out = (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2)
        return self.out_proj(out.reshape(bsz, length, self.embed_dim)), None


class PositionTable(nn.Embedding):
    """OPT's learned positions: an nn.Embedding with a forward of its own (an offset)."""

    def forward(self, length: int) -> Tensor:  # type: ignore[override]
        return super().forward(torch.arange(length) + 2)


class BartLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(20, 16), PositionTable(18, 16)
        self.attention, self.norm = EncoderDecoderAttention(), nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.tokens(ids) + self.positions(ids.shape[1])
        h = self.norm(h + self.attention(h)[0])
        return self.head(h[:, 0])


def test_bart_and_opt_heads_and_their_learned_positions(tmp_path):
    torch.manual_seed(0)
    model = bp.convert(BartLike(), "gaussian").double().eval()
    ids = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(1))
    scores = activation_scores(model, (ids,))
    assert scores["attention"].shape == (4,)
    assert torch.isfinite(scores["attention.out_proj"]).all()  # the stream: positions too
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    small = result.model
    assert small.attention.num_heads == 2 and small.attention.embed_dim == 8
    assert small.positions.weight.shape == (18, 8) == (18, small.tokens.embedding_dim)
    assert result.max_abs_difference < 1e-10
    path = save_shrunk(small, tmp_path / "bart.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(BartLike(), "gaussian").double())
    with torch.no_grad(), bp.nn.use_posterior_mean(loaded), bp.nn.use_posterior_mean(small):
        torch.testing.assert_close(loaded(ids), small(ids), rtol=0, atol=0)


class NoNormBlock(nn.Module):
    """MobileBERT's shape: the attention's output projection writes a stream that no
    LayerNorm reads (its `NoNorm` is a per-channel scale and shift), so a dropped unit's
    constant is folded into the next layer, not zeroed."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attention = nn.Linear(6, 16), EncoderDecoderAttention()
        self.scale, self.shift = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = (h + self.attention(h)[0]) * self.scale + self.shift
        return self.head(h.mean(1))


def test_a_dropped_head_and_dropped_output_units_together_equal_the_masked_model():
    """The dropped head's constant was folded into every row of the output projection,
    the dropped rows too, which the masked model (those rows masked) does not have:
    MobileBERT failed the check by 2e-3."""
    torch.manual_seed(0)
    model = bp.convert(NoNormBlock(), "gaussian").double().eval()
    stream = list(range(4, 16))  # the residual stream's units: both writers drop 0-3
    keep = {"attention": [1, 2, 3], "attention.out_proj": stream, "embed": stream}
    result = shrink_graph(model, _tokens(), prune_units=keep)
    assert result.model.attention.num_heads == 3 and result.model.head.in_features == 12
    assert result.max_abs_difference < 1e-9


class DisentangledSelfAttention(nn.Module):
    """DeBERTa's: `*_proj` layers, the head count handed to `transpose_for_scores`."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = heads * self.attention_head_size
        self.query_proj, self.key_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.value_proj = nn.Linear(dim, dim)

    def transpose_for_scores(self, x: Tensor, heads: int) -> Tensor:
        x = x.view(*x.size()[:-1], heads, -1)
        return x.permute(0, 2, 1, 3).contiguous().view(-1, x.size(1), x.size(-1))

    def forward(self, hidden: Tensor) -> tuple[Tensor]:
        q, k, v = (
            self.transpose_for_scores(layer(hidden), self.num_attention_heads)
            for layer in (self.query_proj, self.key_proj, self.value_proj)
        )
        weights = (q @ k.transpose(-1, -2) / self.attention_head_size**0.5).softmax(-1)
        context = (weights @ v).view(-1, self.num_attention_heads, hidden.size(1), q.size(-1))
        context = context.permute(0, 2, 1, 3).contiguous()
        return (context.view(*context.size()[:-2], self.all_head_size),)


class DebertaAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self, self.output = DisentangledSelfAttention(), SelfOutput()

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(self.self(hidden)[0], hidden)


def test_deberta_heads_are_proven_scored_and_removed():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), DebertaAttention(), nn.Linear(16, 3))
    model = bp.convert(model, "gaussian").double().eval()
    assert head_layout(model[1]) is not None and head_count(model[1]) == 4
    x = _tokens()
    assert activation_scores(model, x)["1"].shape == (4,)
    result = shrink_graph(model, x, prune_units={"1": [0, 3]})
    assert result.model[1].self.num_attention_heads == 2
    assert result.model[1].self.value_proj.out_features == 8
    assert result.max_abs_difference < 1e-9


class AlbertAttention(nn.Module):
    """ALBERT's: the projections, the output layer and the norm in one module."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = heads * self.attention_head_size
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.value, self.dense = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim)

    def split(self, x: Tensor) -> Tensor:
        shape = (*x.size()[:-1], self.num_attention_heads, self.attention_head_size)
        return x.view(shape).permute(0, 2, 1, 3)

    def forward(self, hidden: Tensor) -> tuple[Tensor]:
        batch, length, _ = hidden.size()
        q, k, v = (self.split(layer(hidden)) for layer in (self.query, self.key, self.value))
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        context = context.reshape(batch, length, self.all_head_size)
        return (self.LayerNorm(hidden + self.dense(context)),)


class Albert(nn.Module):
    """One attention and MLP called at every depth (ALBERT shares its layer)."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.depth, self.embed = depth, nn.Linear(6, 16)
        self.attention = AlbertAttention()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for _ in range(self.depth):
            h = self.attention(h)[0]
            h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h.mean(1))


def test_albert_heads_go_in_every_call_of_its_shared_layer(tmp_path):
    torch.manual_seed(3)
    model = bp.convert(Albert(), "gaussian").double().eval()
    assert head_layout(model.attention) is not None and head_count(model.attention) == 4
    x = _tokens()
    scores = activation_scores(model, x)
    assert scores["attention"].shape == (4,) and torch.isfinite(scores["attention"]).all()
    result = shrink_graph(model, x, prune_units={"attention": [1, 2]}, check=True)
    small = result.model.attention
    assert (small.num_attention_heads, small.all_head_size) == (2, 8)
    assert small.value.out_features == small.dense.in_features == 8
    assert small.dense.out_features == 16 and result.max_abs_difference < 1e-9
    path = save_shrunk(result.model, tmp_path / "albert.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Albert(), "gaussian").double())
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)
