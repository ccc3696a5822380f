"""A ViT's residual stream: the class token concatenated before the patches and the
position embedding added to them follow the stream's channels, so its width can go.

Both parameters make a stream channel nonzero, and every block's LayerNorm reads it in
its statistics: a channel goes only where it is exactly 0 at every norm, so for the
units `prune_units` drops their entries of the class token and the position embedding
are zeroed (as their biases and the norms' scale and shift), here and in the masked
reference, and the parameters are sliced with the layers.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import (
    ZeroCountingLayerNorm,
    activation_scores,
    apply_masks,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
    shrink_graph,
    unit_weight_masks,
)
from bayesprune.compress.heads import attention_modules, head_layout
from bayesprune.io import load_tensors
from bayesprune.nn import GatedLayer, MultiheadAttention, use_posterior_mean
from bayesprune.vit import vit

WIDTH, HEADS, PATCH, SIZE = 8, 2, 4, 8
TOKENS = (SIZE // PATCH) ** 2 + 1
DROPPED = [1, 6]


class Attention(nn.Module):
    """timm's: one qkv projection, heads split by sizes its attributes hold."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = HEADS, dim // HEADS
        self.attn_dim = dim
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, two blocks, final norm, the
    class token's features to the head (timm's VisionTransformer, small)."""

    def __init__(self, fixed_token: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS, WIDTH))
        self.blocks = nn.Sequential(Block(WIDTH), Block(WIDTH))
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 3)
        self.fixed_token = fixed_token

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        width = WIDTH if self.fixed_token else -1  # a written size fixes the channels
        cls = self.cls_token.expand(x.shape[0], -1, width)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


STREAM = ["patch", "blocks.0.attn.proj", "blocks.0.fc2", "blocks.1.attn.proj", "blocks.1.fc2"]
NORMS = ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"]


def _model(family: str = "gaussian", fixed_token: bool = False) -> nn.Module:
    torch.manual_seed(0)
    plain = TinyViT(fixed_token)
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


def _x() -> Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).double()


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), use_posterior_mean(model):
        return model.eval()(x)


def _drop_stream() -> dict[str, Tensor]:
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[DROPPED] = False
    return dict.fromkeys(STREAM, keep)


def _deleted_by_hand(model: nn.Module) -> nn.Module:
    """The dropped stream units deleted by hand (posterior means): their weights and
    biases, their class token and position entries, the norms' scale and shift zeroed."""
    with torch.no_grad():
        for name in STREAM:
            layer = model.get_submodule(name)
            layer.weight_mu[DROPPED], layer.bias_mu[DROPPED] = 0.0, 0.0
        model.cls_token[..., DROPPED] = 0.0
        model.pos_embed[..., DROPPED] = 0.0
        for name in NORMS:
            norm = model.get_submodule(name)
            norm.weight[DROPPED], norm.bias[DROPPED] = 0.0, 0.0
    return model


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_the_stream_narrows_through_class_token_and_position_embedding(family):
    model, x = _model(family), _x()
    scores = activation_scores(model, x)
    assert all(torch.isfinite(scores[n]).all() for n in STREAM)  # the stream is scored
    result = shrink_graph(model, x, prune_units=_drop_stream())
    assert result.max_abs_difference < 1e-10
    kept = [u for u in range(WIDTH) if u not in DROPPED]
    for name in STREAM:
        assert next(r for r in result.layers if r.name == name).kept_units == kept, name
    small = result.model
    assert small.cls_token.shape == (1, 1, len(kept))
    assert small.pos_embed.shape == (1, TOKENS, len(kept))
    for name in NORMS:
        assert isinstance(small.get_submodule(name), ZeroCountingLayerNorm), name
    assert small.blocks[0].attn.qkv.in_features == small.head.in_features == len(kept)
    assert any("cls_token (2), pos_embed (2)" in note for note in result.notes)
    reference = _deleted_by_hand(_model(family))
    torch.testing.assert_close(_out(small, x), _out(reference, x), rtol=0, atol=1e-10)


def test_a_dead_stream_unit_stays_while_its_position_entries_make_it_nonzero():
    """Its weights and bias are 0 but the position embedding still writes its channel,
    which the norms read: nothing asked for its removal, so it stays and the model is
    unchanged."""
    model, x = _model(), _x()
    with torch.no_grad():
        for name in STREAM:
            layer = model.get_submodule(name)
            layer.weight_mu[3], layer.bias_mu[3] = 0.0, 0.0
    result = shrink_graph(model, x)
    assert result.model.patch.out_channels == WIDTH
    assert result.model.pos_embed.shape[-1] == WIDTH
    torch.testing.assert_close(_out(result.model, x), _out(model, x), rtol=0, atol=1e-10)


def test_a_class_token_expanded_to_a_written_width_pins_the_stream():
    model, x = _model(fixed_token=True), _x()
    result = shrink_graph(model, x, prune_units=_drop_stream())
    assert result.model.patch.out_channels == WIDTH
    assert result.model.cls_token.shape[-1] == WIDTH
    torch.testing.assert_close(_out(result.model, x), _out(model, x))


def test_a_narrowed_vit_saves_loads_and_exports(tmp_path):
    model, x = _model(), _x()
    result = shrink_graph(model, x, prune_units=_drop_stream())
    path = save_shrunk(result.model, tmp_path / "vit.safetensors")
    _, record = load_tensors(path)
    width = WIDTH - len(DROPPED)
    assert record["parameters"]["pos_embed"] == [1, TOKENS, width]
    assert record["parameters"]["cls_token"] == [1, 1, width]
    loaded = load_shrunk(path, lambda: convert(TinyViT().double(), "gaussian"))
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)
    onnx = export_onnx(loaded.float(), tmp_path / "vit.onnx", input_shape=(3, SIZE, SIZE))
    assert onnx_difference(onnx, loaded, x.float()) < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (bench extra)")
def test_timm_vision_transformer_streams_are_scored_and_shrunk():
    import_torchvision_models()  # timm imports torchvision, whose compiled ops may not load
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                            num_classes=3)  # fmt: skip
    model = convert(net.double(), "gaussian").double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["patch_embed.proj"]).all()
    assert torch.isfinite(scores["blocks.1.mlp.fc2"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-10
    width = result.model.patch_embed.proj.out_channels
    assert width < 16
    assert result.model.pos_embed.shape[-1] == result.model.cls_token.shape[-1] == width


def test_bayesprunes_own_vit_narrows_through_its_attention_modules(tmp_path):
    """`bayesprune.vit`: the attention's q/k/v projections read the stream and out_proj
    writes it, so the stream's channels go through them (and its heads go as heads)."""
    torch.manual_seed(0)
    model = vit(image_size=8, patch=4, width=16, depth=2, heads=4, hidden=32).double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["blocks.0.attention.out_proj"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-10
    small = result.model
    width = small.patch.out_channels
    assert width < 16
    for block in small.blocks:
        attention = block.attention
        assert attention.embed_dim == attention.out_proj.out_features == width
        assert attention.k_proj.in_features == attention.v_proj.in_features == width
    path = save_shrunk(small, tmp_path / "vit.safetensors")
    factory = lambda: vit(image_size=8, patch=4, width=16, depth=2, heads=4, hidden=32)  # noqa: E731
    loaded = load_shrunk(path, factory)
    torch.testing.assert_close(_out(loaded.double(), x), _out(small, x), rtol=0, atol=1e-12)


class CrossAttention(nn.Module):
    """Queries from one stream, keys and values from another: not one tensor's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, WIDTH), nn.Linear(4, WIDTH)
        self.attn = MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, kv = self.a(x), self.b(x)
        return self.head(q + self.attn(q, kv, kv, need_weights=False)[0])


def test_cross_attention_keeps_its_streams():
    torch.manual_seed(0)
    model = CrossAttention().double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[DROPPED] = False
    result = shrink_graph(model, x, prune_units={"a": keep, "b": keep})
    assert result.model.a.out_features == result.model.b.out_features == WIDTH
    torch.testing.assert_close(result.model(x), model(x))


def test_fused_attention_heads_are_units_proven_by_a_probe():
    """timm's layout (one qkv layer, `num_heads` / `head_dim` / `attn_dim` read by its
    forward): a head's q, k, v rows and output columns go, the attributes are rewritten,
    and the result equals the model with that head's value rows masked."""
    model, x = _model(), _x()
    assert list(attention_modules(model)) == ["blocks.0.attn", "blocks.1.attn"]
    scores = activation_scores(model, x)
    assert scores["blocks.0.attn"].shape == (HEADS,)
    result = shrink_graph(model, x, prune_units={"blocks.0.attn": [True, False]})
    attention = result.model.blocks[0].attn
    assert (attention.num_heads, attention.attn_dim) == (1, WIDTH // HEADS)
    assert attention.qkv.out_features == 3 * WIDTH // HEADS
    assert attention.proj.in_features == WIDTH // HEADS
    assert result.heads == {"blocks.0.attn": [0]}
    assert result.attributes["blocks.0.attn"] == {"num_heads": 1, "attn_dim": WIDTH // HEADS}
    masked = _model()
    values = unit_weight_masks(masked, {"blocks.0.attn": torch.tensor([True, False])})
    rows = values["blocks.0.attn.qkv"].flatten(1).all(1)  # q, k stay; head 1's values go
    assert rows.tolist() == [True] * (2 * WIDTH + WIDTH // HEADS) + [False] * (WIDTH // HEADS)
    apply_masks(masked, values)
    torch.testing.assert_close(_out(result.model, x), _out(masked, x), rtol=0, atol=1e-10)


class ReadsItsInputWidth(Attention):
    """An older timm attention: the output reshaped with the width read off its input."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_a_fused_attention_that_reads_its_width_elsewhere_keeps_its_heads():
    assert head_layout(Attention(WIDTH)) is not None
    assert head_layout(ReadsItsInputWidth(WIDTH)) is None  # the probe without a head fails


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (bench extra)")
def test_timm_vision_transformer_loses_heads_and_stream_and_reloads(tmp_path):
    import_torchvision_models()  # timm imports torchvision, whose compiled ops may not load
    from timm.models.vision_transformer import VisionTransformer

    def build() -> nn.Module:
        net = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=4,
                                num_classes=3)  # fmt: skip
        return convert(net.double(), "gaussian")

    torch.manual_seed(0)
    model = build().double().eval()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert scores["blocks.0.attn"].shape == (4,)
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.5))
    assert result.max_abs_difference < 1e-10
    assert [b.attn.num_heads for b in result.model.blocks] == [2, 2]
    assert result.model.patch_embed.proj.out_channels == 8
    loaded = load_shrunk(save_shrunk(result.model, tmp_path / "vit.safetensors"), build)
    assert loaded.blocks[1].attn.attn_dim == 8
    torch.testing.assert_close(_out(loaded.double(), x), _out(result.model, x), rtol=0, atol=0)


def test_torchvision_vision_transformer_with_split_attention_narrows():
    """torchvision's ViT: its class token, position embedding, `reshape(n,
    self.hidden_dim, -1)` (an attribute, rewritten) and, once split, its attention."""
    import_torchvision_models()  # torchvision's compiled ops may not load beside CPU torch
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=48, mlp_dim=64,
                            num_classes=5)  # fmt: skip
    model = convert(net.double(), "gaussian", split_attention=True).double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["conv_proj"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-10
    assert result.model.conv_proj.out_channels == result.model.hidden_dim == 36
    assert result.attributes[""] == {"hidden_dim": 36}
    assert result.model.encoder.pos_embedding.shape[-1] == 36
