"""LayerNorm over the channels (ConvNeXt's blocks and its channels-first LayerNorm2d) and
per-channel parameters (its layer scale): a residual stream's channels can go.

A LayerNorm reads every channel in its statistics, so a stream channel goes only where
it is exactly 0 at every LayerNorm's input and the norm's scale there is 0 (zeroed for
the units `prune_units` drops); the norm then becomes a `ZeroCountingLayerNorm`, whose
statistics count the removed zeros, and the shrunk model equals the masked one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import (
    ZeroCountingLayerNorm,
    activation_scores,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
    shrink_graph,
)
from bayesprune.compress.layer_norm import layer_norm_layout
from bayesprune.io import load_tensors
from bayesprune.nn import GatedLayer, use_posterior_mean

WIDTH = 8
DROPPED = [2, 5]


class LayerNorm2d(nn.LayerNorm):
    """As torchvision's and timm's: a LayerNorm over dim 1 of a map."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias)
        return x.permute(0, 3, 1, 2)


class FusedLayerNorm(nn.LayerNorm):
    """As timm's LayerNorm: its own forward (which may call a fused kernel), same result."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class NormThenReLU(nn.LayerNorm):
    """A LayerNorm subclass that computes something else: read as before, not replaced."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt's block as timm writes it: depthwise conv, LayerNorm on tokens (timm's
    own class), MLP, a layer scale of size C reshaped to C×1×1, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = FusedLayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.layer_scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y.mul(self.layer_scale.reshape(1, -1, 1, 1))


class TinyConvNeXt(nn.Module):
    def __init__(self, c: int = WIDTH) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.stem_norm = LayerNorm2d(c)
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.down_norm = LayerNorm2d(c)
        self.down = nn.Conv2d(c, 12, 2, stride=2)
        self.head = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(self.down_norm(self.blocks(self.stem_norm(self.stem(x)))))
        return self.head(x.mean((2, 3)))


STREAM = ["stem", "blocks.0.fc2", "blocks.1.fc2"]  # every layer that writes the stream
NORMS = ["stem_norm", "blocks.0.norm", "blocks.1.norm", "down_norm"]


def _model(family: str = "gaussian") -> nn.Module:
    torch.manual_seed(0)
    plain = TinyConvNeXt()
    for m in plain.modules():
        if isinstance(m, nn.LayerNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    model = convert(plain.double(), family).double().eval()
    for m in model.modules():
        if isinstance(m, GatedLayer) and m.unit_inclusion() is not None:
            m.set_inclusion(units=torch.full_like(m.unit_inclusion(), 0.9))
    return model


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), use_posterior_mean(model):
        return model.eval()(x)


def _drop_stream() -> dict[str, Tensor]:
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[DROPPED] = False
    return dict.fromkeys(STREAM, keep)


def _x() -> Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()


@pytest.mark.parametrize("layout", ["last", "first"])
def test_zero_counting_layer_norm_equals_layer_norm_over_the_zero_padded_channels(layout):
    torch.manual_seed(0)
    norm = nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    kept = torch.tensor([0, 2, 3, 5])
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64) * 3 + 1
    x[..., [1, 4]] = 0.0
    dim = -1 if layout == "last" else 1
    counted = ZeroCountingLayerNorm.of(norm, kept, dim)
    expected = norm(x)[..., kept]
    inputs = x[..., kept] if layout == "last" else x[..., kept].movedim(-1, 1)
    got = counted(inputs) if layout == "last" else counted(inputs).movedim(1, -1)
    torch.testing.assert_close(got, expected)
    plain = F.layer_norm(x[..., kept], (4,), norm.weight[kept], norm.bias[kept])
    assert not torch.allclose(plain, expected)  # a LayerNorm over the kept ones alone differs
    rebuilt = ZeroCountingLayerNorm.from_config(counted.config())
    assert (rebuilt.kept, rebuilt.total, rebuilt.channel_dim) == (4, 6, dim)


def test_layer_norm_subclasses_are_read_by_what_they_compute():
    assert layer_norm_layout(LayerNorm2d(4)) == 1
    assert layer_norm_layout(FusedLayerNorm(4)) == -1
    assert layer_norm_layout(NormThenReLU(4)) is None
    assert layer_norm_layout(nn.LayerNorm(4)) is None  # torch's own forward: read as it is


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_stream_channels_go_through_layer_norms_and_layer_scales(family):
    model, x = _model(family), _x()
    scores = activation_scores(model, x)
    assert all(torch.isfinite(scores[n]).all() for n in STREAM)  # the stream is scored
    result = shrink_graph(model, x, prune_units=_drop_stream())
    assert result.max_abs_difference < 1e-10
    kept = [u for u in range(WIDTH) if u not in DROPPED]
    for name in STREAM:
        record = next(r for r in result.layers if r.name == name)
        assert record.kept_units == kept, name
    for name in NORMS:
        norm = result.model.get_submodule(name)
        assert isinstance(norm, ZeroCountingLayerNorm), name
        assert (norm.kept, norm.total) == (WIDTH - len(DROPPED), WIDTH)
    for block in result.model.blocks:
        assert block.layer_scale.shape == (WIDTH - len(DROPPED),)
        assert block.dw.out_channels == block.fc1.in_features == WIDTH - len(DROPPED)
    # the masked model: those units and the norms' scale and shift at them zeroed
    masked = _model(family)
    torch.testing.assert_close(_out(result.model, x), _masked_out(masked, x), rtol=0, atol=1e-10)


def _masked_out(model: nn.Module, x: Tensor) -> Tensor:
    """The model with the dropped stream units deleted by hand (posterior means): their
    incoming weights, biases (the depthwise kernels' too) and the norms' scale and shift
    zeroed."""
    _zero_stream_units(model, DROPPED)
    with torch.no_grad():
        for name in NORMS:
            norm = model.get_submodule(name)
            norm.weight[DROPPED], norm.bias[DROPPED] = 0.0, 0.0
    return _out(model, x)


def _zero_stream_units(model: nn.Module, units: list[int]) -> None:
    """The stream units' incoming weights and biases, and the depthwise kernels' biases."""
    with torch.no_grad():
        for name in STREAM:
            layer = model.get_submodule(name)
            layer.weight_mu[units], layer.bias_mu[units] = 0.0, 0.0
        for block in model.blocks:
            block.dw.bias_mu[units] = 0.0


def test_a_dead_stream_channel_stays_where_a_layer_norm_still_scales_it():
    """Exactly 0 at every norm's input, but the norms' scale there is not 0: their
    output at it is −μ/σ · γ + β, which the next layers read, so it stays."""
    model, x = _model(), _x()
    _zero_stream_units(model, [3])
    result = shrink_graph(model, x)
    assert result.model.stem.out_channels == WIDTH
    assert isinstance(result.model.stem_norm, LayerNorm2d)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), rtol=0, atol=1e-10)


def test_an_unread_stream_channel_stays_since_layer_norms_read_it():
    """No layer weighs the channel (zero columns everywhere), but it is live: the norms'
    statistics read it, so it is not an orphan that may go."""
    model, x = _model(), _x()
    with torch.no_grad():
        for block in model.blocks:
            block.fc1.weight_mu[:, 4] = 0.0
        model.down.weight_mu[:, 4] = 0.0
    result = shrink_graph(model, x)
    assert result.model.stem.out_channels == WIDTH
    torch.testing.assert_close(_out(result.model, x), _out(model, x), rtol=0, atol=1e-10)


def test_a_shrunk_stream_saves_and_loads_into_a_fresh_model(tmp_path):
    model, x = _model(), _x()
    result = shrink_graph(model, x, prune_units=_drop_stream())
    path = save_shrunk(result.model, tmp_path / "tiny.safetensors")
    _, record = load_tensors(path)
    assert record["version"] == 4
    assert record["parameters"]["blocks.0.layer_scale"] == [WIDTH - len(DROPPED)]
    loaded = load_shrunk(path, lambda: convert(TinyConvNeXt().double(), "gaussian"))
    assert isinstance(loaded.stem_norm, ZeroCountingLayerNorm)
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)
    onnx = export_onnx(loaded.float(), tmp_path / "tiny.onnx", input_shape=(3, 16, 16))
    assert onnx_difference(onnx, loaded, x.float()) < 1e-5  # a Pad, LayerNormalization, Slice


def test_torchvision_convnext_streams_are_scored_and_shrunk():
    """torchvision's ConvNeXt (LayerNorm2d, Permute, layer scale, stochastic depth),
    two small stages: every stream is scored and keep_units narrows them exactly."""
    import_torchvision_models()  # torchvision's compiled ops may not load beside CPU torch
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    settings = [CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 1)]
    model = convert(ConvNeXt(settings, num_classes=4).double(), "gaussian").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    scores = activation_scores(model, x)
    pinned = [n for n, s in scores.items() if not torch.isfinite(s).all()]
    assert pinned == ["classifier.2"]  # the model's output; every stream is scored
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-10
    stem = result.model.features[0][0]
    assert stem.out_channels < 16
    assert result.model.features[1][0].layer_scale.shape[0] == stem.out_channels
    assert isinstance(result.model.features[0][1], ZeroCountingLayerNorm)


class Tokens(nn.Module):
    """A token model: embedding, LayerNorm over the channels, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(4, WIDTH), nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.embed(x)))


@pytest.mark.parametrize("constant", [0.0, 0.7])
def test_a_channel_goes_through_a_layer_norm_only_where_it_is_exactly_zero(constant):
    """A dead unit whose norm scale is 0 emits the norm's shift, which the head could
    absorb; it goes only when it is 0 at the norm's input too (else the statistics of
    every other channel counted its constant)."""
    torch.manual_seed(0)
    model = Tokens().double().eval()
    with torch.no_grad():
        model.norm.bias.normal_()
        model.embed.weight[2], model.embed.bias[2] = 0.0, constant
        model.norm.weight[2] = 0.0
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-10)
    assert result.model.embed.out_features == (WIDTH if constant else WIDTH - 1)
    assert isinstance(result.model.norm, nn.LayerNorm if constant else ZeroCountingLayerNorm)


class FixedScale(nn.Module):
    """A layer scale viewed with a size the forward writes (timm's MetaFormer `Scale`):
    the stream keeps its width instead of breaking the view."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Conv2d(3, WIDTH, 1), nn.Linear(WIDTH, 2)
        self.scale = nn.Parameter(torch.rand(WIDTH) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head((self.embed(x) * self.scale.view(WIDTH, 1, 1)).mean((2, 3)))


def test_a_scale_viewed_with_a_written_size_pins_the_channels():
    model = FixedScale().double().eval()
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[DROPPED] = False
    result = shrink_graph(model, _x(), prune_units={"embed": keep})
    assert result.model.embed.out_channels == WIDTH
    torch.testing.assert_close(result.model(_x()), model(_x()))


class ReadsItsWidth(nn.Module):
    """As MaxViT's and timm's attention: an inner tensor of its own width reshaped with
    the stream's width read off the stream (`B, N, C = x.shape`)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(4, WIDTH), nn.LayerNorm(WIDTH)
        self.inner, self.proj = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x: Tensor) -> Tensor:
        s = self.embed(x)
        b, n, c = s.shape
        h = self.inner(self.norm(s)).reshape(b, n, 2, WIDTH // 2).flip(2).reshape(b, n, c)
        return self.head(s + self.proj(h))


def test_a_stream_whose_width_sizes_another_tensor_keeps_it():
    torch.manual_seed(0)
    model = ReadsItsWidth().double().eval()
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[DROPPED] = False
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    result = shrink_graph(model, x, prune_units={"embed": keep, "proj": keep})
    assert result.model.embed.out_features == WIDTH
    torch.testing.assert_close(result.model(x), model(x))
