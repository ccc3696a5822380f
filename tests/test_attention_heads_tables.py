"""Attention whose heads carry a table of their own (a Swin's relative position bias, one
column per head): the table loses the removed heads' columns with them, exactly, and the
file `save_shrunk` writes holds its new shape."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.heads import head_tables

WIDTH, HEADS, TOKENS = 16, 4, 9


class WindowAttention(nn.Module):
    """timm's Swin attention, in short: a fused `qkv`, `num_heads` and no `head_dim`,
    a bias table of (2·3 − 1)² relative positions × heads read through an index."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = HEADS
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.relative_position_bias_table = nn.Parameter(torch.randn(25, HEADS))
        coords = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"))
        relative = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]) + 2
        self.register_buffer("relative_position_index", relative[0] * 5 + relative[1])

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)
        attn = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias, -1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = (
            nn.Linear(3, WIDTH),
            WindowAttention(),
            nn.Linear(WIDTH, 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(1))


def _x() -> Tensor:
    return torch.randn(
        4, TOKENS, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )


def test_heads_take_their_table_columns_along(tmp_path):
    torch.manual_seed(0)
    model, x = bp.convert(Block(), "gaussian").double().eval(), _x()
    scores = activation_scores(model, x)
    assert scores["attn"].shape == (HEADS,)  # proven only with the table sliced too
    assert head_tables(model.attn) == (("relative_position_bias_table", 1),)
    result = shrink_graph(model, x, prune_units={"attn": torch.tensor([1, 0, 1, 1]) > 0})
    small = result.model.attn
    assert small.num_heads == 3 and small.relative_position_bias_table.shape == (25, 3)
    table = model.attn.relative_position_bias_table.detach()
    torch.testing.assert_close(small.relative_position_bias_table.detach(), table[:, [0, 2, 3]])
    assert result.max_abs_difference < 1e-10
    path = save_shrunk(result.model, tmp_path / "swin.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Block(), "gaussian").double())
    assert loaded.attn.relative_position_bias_table.shape == (25, 3)
    with torch.no_grad(), bp.nn.use_posterior_mean(loaded), bp.nn.use_posterior_mean(result.model):
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_keep_units_drops_heads_with_their_tables():
    torch.manual_seed(1)
    model, x = bp.convert(Block(), "gaussian").double().eval(), _x()
    scores = activation_scores(model, x)
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.attn.relative_position_bias_table.shape[1] == result.model.attn.num_heads
    assert result.max_abs_difference < 1e-10
