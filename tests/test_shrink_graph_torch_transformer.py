"""torch's own nn.TransformerEncoder(Layer): traced through, so its MLP hidden units are
scored and go (and, with its attention split, its heads and residual stream); its fused
inference path (which reads `linear1.weight` itself) is off while it holds Bayesian
layers and back on in the deterministic twin."""

from __future__ import annotations

import pytest
import torch
from test_shrink_graph import TOL, _kill
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.nn import evaluation_pass


class Encoder(nn.Module):
    """Token features → torch's encoder (pre-norm, GELU, a key padding mask) → mean → head."""

    def __init__(self, norm_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(
            16, 4, dim_feedforward=24, dropout=0.1, activation="gelu", batch_first=True,
            norm_first=norm_first,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x), src_key_padding_mask=padding).mean(1))


def _batch(tokens: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(3, tokens, 6, generator=g, dtype=torch.float64)
    padding = torch.zeros(3, tokens, dtype=torch.bool)
    padding[0, -2:] = True  # the first sequence is two tokens shorter
    return x, padding


def _out(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
    with evaluation_pass(model):
        return model(*batch)


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(Encoder().double(), family).double().eval()


@pytest.mark.parametrize("family", ["deterministic", "gaussian", "sparse_vd", "spike_slab"])
def test_the_mlp_hidden_units_of_torch_s_encoder_go(family):
    model = _model(family)
    scores = activation_scores(model, _batch(7))
    assert {"encoder.layers.0.linear1", "encoder.layers.1.linear1"} <= set(scores)
    for layer in ("encoder.layers.0.linear1", "encoder.layers.1.linear1"):
        _kill(model, layer, list(range(0, 24, 2)))  # their biases pass GELU to linear2's
    result = shrink_graph(model, _batch(7))
    small = result.model
    assert small.encoder.layers[0].linear1.out_features == 12
    assert small.encoder.layers[1].linear2.in_features == 12
    for tokens in (7, 11):  # another length: the folded constants hold at every token
        batch = _batch(tokens)
        torch.testing.assert_close(_out(small, batch), _out(model, batch), atol=TOL, rtol=TOL)


def test_a_converted_encoder_predicts_and_its_twin_gets_the_fused_path_back():
    plain = Encoder(norm_first=False).eval()
    bayes = bp.convert(plain, "gaussian").eval()
    assert plain.encoder.layers[0].activation_relu_or_gelu == 2  # torch's GELU flag
    assert bayes.encoder.layers[0].activation_relu_or_gelu == 0
    x, padding = _batch(5)
    with torch.no_grad():  # eval without gradients: where torch takes its fused path
        out = bayes(x.float(), padding)
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    twin = bp.to_deterministic(bayes)
    assert twin.encoder.layers[1].activation_relu_or_gelu == 2


def test_the_shrunk_encoder_saves_and_loads(tmp_path):
    model = _model("gaussian")
    keep = keep_units(activation_scores(model, _batch(7)), sparsity=0.5)
    small = shrink_graph(model, _batch(7), prune_units=keep).model
    path = save_shrunk(small, tmp_path / "encoder.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Encoder(), "gaussian")).double()
    torch.testing.assert_close(_out(loaded, _batch(9)), _out(small, _batch(9)))


class Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.src, self.tgt = nn.Linear(6, 16), nn.Linear(5, 16)
        self.transformer = nn.Transformer(16, 4, 1, 1, 24, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        return self.head(self.transformer(self.src(s), self.tgt(t)))


def test_nn_transformer_which_checks_sizes_in_python_stays_whole():
    torch.manual_seed(0)
    model = bp.convert(Seq2Seq(), "gaussian").eval()
    example = (torch.randn(2, 7, 6), torch.randn(2, 4, 5))
    scores = activation_scores(model, example)
    assert set(scores) == {"src", "tgt", "head"}  # the layers inside keep their units
    result = shrink_graph(model, example, prune_units=keep_units(scores, sparsity=0.5))
    assert result.max_abs_difference < TOL


@pytest.mark.parametrize("norm_first", [True, False])
def test_with_split_attention_heads_mlp_units_and_the_stream_go_together(tmp_path, norm_first):
    """Split, the attention reads and writes the stream through its projections, and the
    encoder's own reads of `src.dtype` pin nothing: the stream narrows (pre- or post-norm)."""
    torch.manual_seed(0)
    model = bp.convert(Encoder(norm_first).double(), "gaussian", split_attention=True)
    model = model.double().eval()
    scores = activation_scores(model, _batch(7))
    assert scores["encoder.layers.0.self_attn"].shape == (4,)  # one score per head
    assert torch.isfinite(scores["embed"]).all()  # the stream is scored
    result = shrink_graph(model, _batch(7), prune_units=keep_units(scores, sparsity=0.5))
    assert result.max_abs_difference < 1e-10
    layer = result.model.encoder.layers[0]
    assert len(result.heads["encoder.layers.0.self_attn"]) == 2
    assert layer.self_attn.q_proj.out_features == 8 and layer.linear1.out_features == 12
    assert result.model.embed.out_features == layer.self_attn.embed_dim == 8
    assert isinstance(layer.norm1, bp.compress.ZeroCountingLayerNorm)
    path = save_shrunk(result.model, tmp_path / "heads.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Encoder(norm_first), "gaussian")).double()
    torch.testing.assert_close(_out(loaded, _batch(9)), _out(result.model, _batch(9)))
