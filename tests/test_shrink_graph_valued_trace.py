"""Forwards that branch on shapes (Hugging Face's style) trace with the example's values."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_parts import VALUED, find_parts
from bayesprune.compress.graph_trace import GraphTraceError, trace
from bayesprune.nn import KeptDeterministicWarning, VariationalLayer, WeightValuesError


class Encoder(nn.Module):
    """A BERT-like forward: sizes unpacked from `ids.size()`, an optional mask made when
    None and widened by its number of dims, an inline activation module, an expanded
    position buffer, and an optional second output."""

    def __init__(self) -> None:
        super().__init__()
        self.words, self.places = nn.Embedding(50, 16), nn.Embedding(32, 16)
        self.register_buffer("positions", torch.arange(32).expand((1, -1)), persistent=False)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, ids: Tensor, mask: Tensor | None = None, hidden: bool = False) -> Tensor:
        batch, length = ids.size()
        if mask is None:
            mask = torch.ones(batch, length, device=ids.device)
        if mask.dim() == 2:
            mask = mask[:, :, None]
        h = self.norm(self.words(ids) + self.places(self.positions[:, :length]))
        h = h + self.fc2(nn.GELU()(self.fc1(h)))
        pooled = (h * mask).sum(1) / mask.sum(1)
        return (self.head(pooled), h) if hidden else self.head(pooled)


def _ids(batch: int = 3, length: int = 7) -> Tensor:
    return torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(0))


def test_the_symbolic_trace_fails_and_the_valued_one_computes_the_model():
    model, ids = Encoder().eval(), _ids()
    with pytest.raises(GraphTraceError):
        trace(model)
    gm = trace(model, inputs=(ids,))
    torch.testing.assert_close(gm(ids), model(ids), rtol=0, atol=0)
    found = find_parts(model, (ids,))
    assert found.traced and found.reason == VALUED


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_the_hidden_units_are_scored_and_deleted(family):
    torch.manual_seed(0)
    model, ids = bp.convert(Encoder(), family).double().eval(), _ids()
    scores = activation_scores(model, (ids,))
    scored = {n for n, s in scores.items() if torch.isfinite(s).any()}
    assert scored == {"fc1", "fc2"}  # the stream the embeddings write is scored too
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.fc1.out_features == 16 and result.model.fc2.in_features == 16
    assert result.model.fc2.out_features == result.model.head.in_features == 8
    assert result.model.words.embedding_dim == result.model.places.weight.shape[1] == 8
    assert result.max_abs_difference < 1e-9 and VALUED in result.notes
    assert isinstance(result.model.fc1, VariationalLayer)
    longer = _ids(2, 11)  # the user's class again: other lengths, the optional output
    with bp.nn.use_posterior_mean(result.model):
        logits, hidden = result.model(longer, hidden=True)
    # the optional output is the narrowed stream: the example's graph did not return it
    assert logits.shape == (2, 3) and hidden.shape == (2, 11, 8)


class ValueFilter(nn.Module):
    """A size read off a boolean-mask selection depends on the values: not answered."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        chosen = self.fc(x)[x.sum(1) > 0]
        return chosen.sum() if chosen.shape[0] > 1 else x.sum()


def test_a_size_that_depends_on_values_still_stops_the_trace():
    with pytest.raises(GraphTraceError):
        trace(ValueFilter(), inputs=(torch.randn(5, 4),))


class ConstantMask(nn.Module):
    """A boolean-mask selection by a mask made of constants (T5 slices its position bias
    so), then a branch on the selection's shape: the shape is fixed, the trace goes on."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.fc, self.mask = nn.Linear(4, 6), mask

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.mask == "outside":  # a tensor the forward makes: no node in the graph
            keep = torch.ones(h.shape[1])
            keep[[1, 4]] = 0
        elif self.mask == "in the graph":  # from a size and constants: nodes, all constant
            keep = torch.arange(h.shape[1], device=h.device) % 3 != 1
        elif self.mask == "random":  # a draw in the graph: a node, not a constant
            keep = torch.rand_like(h[0]) > -1.0
        else:  # from the values
            keep = h.sum(0) > -1e9
        picked = h[:, keep.bool()]
        if picked.shape[1] != 4 and self.mask != "random" and self.mask != "values":
            raise ValueError("the selection should keep 4 of 6")
        return picked


@pytest.mark.parametrize("mask", ["outside", "in the graph"])
def test_a_selection_by_a_constant_mask_keeps_its_shape_known(mask):
    gm = trace(ConstantMask(mask), inputs=(torch.randn(5, 4),))
    assert gm(torch.randn(3, 4)).shape == (3, 4)


@pytest.mark.parametrize("mask", ["random", "values"])
def test_a_selection_by_a_drawn_or_computed_mask_stays_data_shaped(mask):
    with pytest.raises(GraphTraceError):
        trace(ConstantMask(mask), inputs=(torch.randn(5, 4),))


class ReadsItsWeight(nn.Module):
    """Hugging Face's ViT casts its pixels to the patch projection's dtype in a forward
    that also branches on the input's number of channels; `read="values"` scales them by
    the weight's norm instead (a read of its values)."""

    def __init__(self, read: str = "dtype") -> None:
        super().__init__()
        self.read = read
        self.inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.inner[0].in_channels:
            raise ValueError("wrong number of channels")
        if self.read == "dtype":
            x = x.to(self.inner[0].weight.dtype)
        else:
            x = x / self.inner[0].weight.norm()
        return self.head(self.inner(x).mean((2, 3)))


def test_convert_sees_a_read_behind_a_shape_branch_given_example_inputs():
    x = torch.randn(2, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptDeterministicWarning)  # it does not see it
        blind = bp.convert(ReadsItsWeight("values"), "gaussian")
    with pytest.raises(WeightValuesError, match=r"norm asked.*example_inputs="):
        blind(x)
    with pytest.warns(KeptDeterministicWarning, match=r"'inner.0'"):
        model = bp.convert(ReadsItsWeight("values"), "gaussian", example_inputs=x)
    assert type(model.inner[0]) is nn.Conv2d and isinstance(model.inner[2], VariationalLayer)
    assert model(x).shape == (2, 2)


def test_a_dtype_read_behind_a_shape_branch_converts_with_or_without_an_example():
    x = torch.randn(2, 3, 6, 6)
    for example in (None, x):
        with warnings.catch_warnings():
            warnings.simplefilter("error", KeptDeterministicWarning)
            model = bp.convert(ReadsItsWeight("dtype"), "gaussian", example_inputs=example)
        assert isinstance(model.inner[0], VariationalLayer)
        assert model(x).shape == (2, 2)


class Cache:
    """A cache object among the outputs (Hugging Face's DynamicCache), no tensor itself."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []


class Decoder(nn.Module):
    """A Llama-like forward: `**kwargs` in its signature, optional arguments before it, a
    gated MLP, and a dict output that holds a cache object."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(50, 16)
        self.gate, self.up, self.down = nn.Linear(16, 24), nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 50)

    def forward(self, ids: Tensor, cache: Cache | None = None, use_cache: bool = True, **kwargs):
        _, length = ids.shape
        h = self.words(ids)
        h = h + self.down(F.silu(self.gate(h)) * self.up(h))
        if use_cache:
            cache = cache or Cache()
            cache.keys.append(h[:, :, :4])
        return {"logits": self.head(h), "cache": cache, "length": length}


@pytest.mark.parametrize("family", ["gaussian", "spike_slab"])
def test_a_forward_with_kwargs_and_a_cache_output_shrinks(family):
    torch.manual_seed(0)
    model, ids = bp.convert(Decoder(), family).double().eval(), _ids(2, 6)
    scores = activation_scores(model, (ids,))
    scored = {n for n, s in scores.items() if torch.isfinite(s).any()}
    assert scored == {"gate", "up"}  # a unit goes with its gate
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.gate.out_features == result.model.up.out_features == 12
    assert result.model.down.in_features == 12 and result.max_abs_difference < 1e-9
    with bp.nn.use_posterior_mean(result.model):
        out = result.model(ids)
    assert isinstance(out["cache"], Cache) and out["logits"].shape == (2, 6, 50)


class WidthReader(nn.Module):
    """A forward that branches on a shape (so only the valued trace follows it) and
    splits a projection with the stream's width read off its input, as ConViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pair, self.head = nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(8, 3)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 8)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        if h.shape[1] > 1000:  # a shape branch
            h = h[:, :1000]
        batch, tokens, width = h.shape
        a, b = self.pair(h).reshape(batch, tokens, 2, width).unbind(2)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h.mean(1)) + (a * b).mean((1, 2))[:, None]


def test_a_width_read_off_a_tensor_in_a_valued_trace_pins_its_channels():
    torch.manual_seed(0)
    model = bp.convert(WidthReader(), "gaussian").double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    scores = activation_scores(model, (x,))
    scored = {n for n, s in scores.items() if torch.isfinite(s).any()}
    assert scored == {"fc1"}  # the stream's width is read: embed and fc2 keep it
    result = shrink_graph(model, (x,), prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.embed.out_features == 8 and result.model.fc1.out_features == 6
    assert result.max_abs_difference < 1e-9


class OptionalMask(nn.Module):
    """fx's symbolic trace takes `mask is None` as false (a proxy is not None) and
    records the product with a mask the example never gives."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mask = torch.ones_like(x[:, :1])
        return self.fc(x) * mask


def test_a_symbolic_trace_that_reads_an_unset_argument_gives_way_to_the_valued_one():
    model, x = OptionalMask().eval(), torch.randn(5, 4)
    gm = trace(model, inputs=(x,))
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    assert find_parts(model, (x,)).reason == VALUED
