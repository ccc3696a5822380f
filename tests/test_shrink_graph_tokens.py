"""shrink_graph where an nn.Linear reads the last axis: tokens (B × T × C) and channels-last maps.

A transformer's MLP (Linear → GELU → Linear on every token), a gated MLP split by
`chunk(2, dim=-1)`, a residual stream of tokens, ConvNeXt's permute → LayerNorm → MLP →
permute block, and torchvision's ViT, ConvNeXt and Swin (small configurations, random
weights). Every shrunk model must equal the masked one to 1e-5 in posterior-mean mode,
also at a sequence length or image size it was not shrunk on, and lose exactly the
units the graph allows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from test_shrink_graph import _build, _kill, _out
from test_shrink_graph_constructs import _shrunk
from torch import Tensor, nn

import bayesprune as bp
from bayesprune import convert
from bayesprune.compress import activation_scores
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_axes import indexed, reduced, reshaped
from bayesprune.nn import VariationalLayer

FAMILIES = ["gaussian", "sparse_vd", "spike_slab"]


class TokenBlock(nn.Module):
    """Pre-norm transformer MLP on tokens, mean over tokens, linear head."""

    def __init__(self, features: int = 5, width: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(features, width), nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(dim=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_mlp_units_go_and_the_normalised_stream_stays(family):
    model = _build(TokenBlock, family)
    _kill(model, "fc1", [1, 4, 7])  # gelu(bias) on every token: folded into fc2's bias
    _kill(model, "embed", [2])  # the stream is normalised over its channels: pinned
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    longer = torch.randn(3, 9, 5, dtype=torch.float64)  # another sequence length
    result, layers = _shrunk(model, x, longer)
    assert layers["fc1"].kept_units == [0, 2, 3, 5, 6, 8, 9, 10, 11]
    assert layers["fc2"].inputs_after == 9
    assert layers["embed"].kept_units == list(range(8))
    assert layers["fc1"].folded_units == 3
    assert result.model.fc1.weight_mu.shape == (9, 8)


class TokenResidual(nn.Module):
    """Tokens with a residual MLP and no normalisation: stream channels may go."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 10), nn.Linear(10, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x[:, 0])  # the first token, as a class token


@pytest.mark.parametrize("family", FAMILIES)
def test_a_token_stream_channel_goes_when_every_writer_of_it_is_dead(family):
    model = _build(TokenResidual, family)
    _kill(model, "embed", [1, 4])
    _kill(model, "fc2", [1, 3])  # 1: dead in both writers, goes; 3 and 4: one writer
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    _, layers = _shrunk(model, x, torch.randn(1, 7, 4, dtype=torch.float64))
    assert layers["embed"].kept_units == layers["fc2"].kept_units == [0, 2, 3, 4, 5]
    assert layers["fc1"].inputs_after == layers["head"].inputs_after == 5


class GatedMLP(nn.Module):
    """A gated MLP on tokens (SwiGLU): `a * silu(g)` after `chunk(2, dim=-1)`."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down, self.head = nn.Linear(4, 12), nn.Linear(6, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.up(x).chunk(2, dim=-1)
        return self.head((x + self.down(a * F.silu(g))).amax(dim=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_gated_unit_goes_with_its_gate_only(family):
    model = _build(GatedMLP, family)
    _kill(model, "up", [0, 6, 2])  # 0 and its gate 6 go together; 2 without 8 stays
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    _, layers = _shrunk(model, x, torch.randn(2, 5, 4, dtype=torch.float64))
    assert layers["up"].kept_units == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert layers["down"].inputs_after == 5


class ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, permute to channels-last, LayerNorm, MLP, back."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(6), nn.Linear(6, 16), nn.Linear(16, 6)
        self.scale = nn.Parameter(torch.full((6, 1, 1), 0.5))
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + self.scale * y).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_channels_last_mlp_loses_its_dead_hidden_units(family):
    model = _build(ChannelsLast, family)
    _kill(model, "fc1", [0, 5, 9, 15])
    _kill(model, "fc2", [2])  # the stem still writes that stream channel: it stays
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    _, layers = _shrunk(model, x, torch.randn(1, 2, 8, 7, dtype=torch.float64))
    assert layers["fc1"].units_after == 12 and layers["fc2"].inputs_after == 12
    assert layers["fc2"].units_after == 6


def test_activation_scores_read_a_token_linear_per_unit():
    """sd of each hidden unit over every token × the norm of its column in fc2."""
    model = _build(TokenBlock, "gaussian").eval()
    x = torch.randn(6, 5, 5, dtype=torch.float64)
    scores = activation_scores(model, x)
    captured = {}
    model.fc2.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    _out(model, x)
    hidden = captured["x"].reshape(-1, 12)
    expected = hidden.std(0, unbiased=False) * model.fc2.weight_mu.detach().norm(dim=0)
    torch.testing.assert_close(scores["fc1"], expected, rtol=1e-9, atol=1e-12)
    # the normalised stream is scored too: its channels may go through the LayerNorm
    assert torch.isfinite(scores["embed"]).all() and (scores["embed"] > 0).all()


class Einsum(nn.Module):
    """An op the graph does not follow, whose first argument is not a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.einsum("bc,bc->bc", self.a(x), self.b(x)))


def test_an_op_the_graph_does_not_know_pins_its_channels():
    model = _build(Einsum, "gaussian")
    _kill(model, "a", [1])
    _, layers = _shrunk(model, torch.randn(2, 3, dtype=torch.float64))
    assert layers["a"].kept_units == list(range(4))


def test_axis_rules():
    assert reshaped([7, 8], 2, torch.Size([2, 3, 2]), torch.Size([2, 6])) == ([7, 8] * 3, 1)
    assert reshaped([7, 8], 3, torch.Size([1, 2, 2, 2]), torch.Size([1, 4, 2])) == ([7, 8], 2)
    assert reshaped([7, 8], 1, torch.Size([1, 2, 2, 3]), torch.Size([1, 2, 6])) == ([7, 8], 1)
    assert reshaped([7, 8], 2, torch.Size([1, 3, 2]), torch.Size([1, 2, 3])) is None
    assert reduced(1, False, 2, 3) == 1 and reduced((1,), True, 2, 3) == 2
    assert reduced(-1, False, 2, 3) is None and reduced(0, False, 2, 3) is None
    assert indexed((slice(None), 0), 2) == 1
    assert indexed((slice(None), slice(1, None)), 2) == 2
    assert indexed((slice(None), 0, slice(0, 2)), 2) is None  # slices the channels
    assert indexed((0,), 2) is None  # the batch


# -- torchvision: ViT, ConvNeXt, Swin ---------------------------------------------------
def _convert(plain: nn.Module, family: str, **options) -> nn.Module:
    return convert(plain.double().eval(), family, **options).double().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_torchvision_vit_mlp_units(family):
    import_torchvision_models()
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    plain = VisionTransformer(16, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    model = _convert(plain, family)
    hidden = [f"encoder.layers.encoder_layer_{i}.mlp.0" for i in (0, 1)]
    for layer in hidden:
        _kill(model, layer, list(range(0, 32, 3)))
    _kill(model, "conv_proj", [1])  # the token stream: normalised, pinned
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    for layer in hidden:
        assert layers[layer].units_after == 32 - 11
    assert layers["conv_proj"].units_after == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_torchvision_convnext_mlp_units(family):
    import_torchvision_models()
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    plain = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=4)
    model = _convert(plain, family)
    hidden = ["features.1.0.block.3", "features.3.0.block.3"]
    for layer in hidden:
        _kill(model, layer, [0, 2, 5])
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    _, layers = _shrunk(model, x, torch.randn(1, 3, 24, 20, dtype=torch.float64))
    for layer in hidden:
        assert layers[layer].units_before - layers[layer].units_after == 3


def test_torchvision_swin_converts_with_its_attention_kept():
    """Swin's attention reads `self.qkv.weight` itself: convert keeps qkv and proj plain."""
    import_torchvision_models()
    from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer

    torch.manual_seed(0)
    plain = SwinTransformer([4, 4], 8, [1, 1], [2, 2], [4, 4], num_classes=3).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(bp.nn.WeightValuesError, match=r"keep=\[ThatModuleClass\]"):
        _convert(plain, "gaussian", keep_read=False)(x)
    with pytest.warns(bp.nn.KeptDeterministicWarning, match=r"'features.1.0.attn.qkv'"):
        found = _convert(plain, "gaussian")
    by_type = _convert(plain, "gaussian", keep=[ShiftedWindowAttention])
    for model in (found, by_type):
        assert not isinstance(model.features[1][0].attn.qkv, VariationalLayer)
        assert not isinstance(model.features[3][0].attn.proj, VariationalLayer)
        assert isinstance(model.features[1][0].mlp[0], VariationalLayer)
    _kill(found, "features.1.0.mlp.0", [1, 2, 3])
    _, layers = _shrunk(found, x)
    assert layers["features.1.0.mlp.0"].units_after == 32 - 3


def test_keep_names_a_type_that_no_module_is():
    with pytest.raises(ValueError, match="no module of the model is"):
        convert(nn.Sequential(nn.Linear(2, 2)), "gaussian", keep=[nn.Conv2d])


class AttentionBlock(nn.Module):
    """Tokens through nn.MultiheadAttention and an MLP: a transformer block end to end."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attention = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = x + self.attention(x, x, x, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


def test_a_shrunk_transformer_block_exports_to_onnx(tmp_path):
    """Attention's fused inference kernel has no ONNX form: export runs it as plain ops."""
    from bayesprune.compress import export_onnx, onnx_difference

    torch.manual_seed(0)
    model = convert(AttentionBlock(), "gaussian").eval()
    _kill(model, "fc1", [0, 1, 2, 3])
    x = torch.randn(4, 5, 4)
    result = shrink_graph(model, x)
    assert result.model.fc1.weight_mu.shape[0] == 12
    path = export_onnx(result.model, tmp_path / "block.onnx", (5, 4))
    assert onnx_difference(path, result.model, x) < 1e-5
    assert torch.backends.mha.get_fastpath_enabled()  # put back


def test_self_compress_rounds_cut_transformer_mlp_units():
    """Rounds of score, cut and shrink on tokens: the lowest-scoring hidden units go, and
    the lowest stream channels from every layer that writes or reads them."""
    from bayesprune.compress import self_compress

    model = _build(TokenResidual, "gaussian")
    x = torch.randn(16, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scores = activation_scores(model, x)
    result = self_compress(
        model, lambda m: {"accuracy": 1.0}, example_inputs=x[:2], score="activation",
        score_data=x, fraction=0.3, max_rounds=1,
    )  # fmt: skip
    small = result.model
    assert type(small) is TokenResidual and result.accepted.round == 1
    torch.testing.assert_close(scores["embed"], scores["fc2"])  # one residual stream
    kept = torch.argsort(scores["fc1"], descending=True, stable=True)[:7].sort().values
    stream = torch.argsort(scores["embed"], descending=True, stable=True)[:4].sort().values
    assert small.fc1.out_features == small.fc2.in_features == 7  # 10 − ceil(0.3·10)
    assert small.embed.out_features == small.fc2.out_features == small.head.in_features == 4
    torch.testing.assert_close(small.fc1.weight_mu, model.fc1.weight_mu[kept][:, stream])


class TokenInputs(nn.Module):
    """Tokens as the model's input: dim 1 holds positions, not features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(x)).mean(1))


def test_input_pruning_never_takes_token_positions_for_features():
    model = _build(TokenInputs, "gaussian")
    result = shrink_graph(model, torch.randn(2, 6, 3, dtype=torch.float64), prune_inputs=True)
    assert result.kept_inputs in ({}, {"x": list(range(6))})
