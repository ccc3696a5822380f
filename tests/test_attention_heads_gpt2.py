"""GPT-2's attention: one fused `c_attn` split by `split_size`, heads counted by
`num_heads` and `head_dim`, and its keys and values per head among the outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph

WIDTH, HEADS = 16, 4


class FusedAttention(nn.Module):
    """GPT2Attention's forward, in short."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = WIDTH, HEADS
        self.head_dim, self.split_size = WIDTH // HEADS, WIDTH
        self.c_attn, self.c_proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, hidden: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.c_attn(hidden).split(self.split_size, dim=2)
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        causal = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
        scores = (q @ k.transpose(-1, -2) / self.head_dim**0.5).masked_fill(~causal, -1e9)
        out = (scores.softmax(-1) @ v).transpose(1, 2)
        return self.c_proj(out.reshape(*out.shape[:-2], -1)), (k, v)


class TinyDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, WIDTH)
        self.blocks = nn.ModuleList([FusedAttention() for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 30)

    def forward(self, ids: Tensor) -> tuple[Tensor, tuple[tuple[Tensor, Tensor], ...]]:
        h, presents = self.embed(ids), ()
        for block in self.blocks:
            out, present = block(h)
            h, presents = h + out, (*presents, present)
        return self.head(self.norm(h)), presents


def _ids() -> Tensor:
    return torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(5))


def _run(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(ids)[0]


def test_fused_heads_go_with_their_cache_entries(tmp_path):
    torch.manual_seed(0)
    model, ids = bp.convert(TinyDecoder(), "gaussian").double().eval(), _ids()
    scores = activation_scores(model, (ids,))
    assert scores["blocks.0"].shape == (HEADS,)
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    block = result.model.blocks[0]
    assert block.num_heads == 2 and block.split_size == 2 * block.head_dim
    assert block.c_attn.out_features == 3 * 2 * block.head_dim
    assert result.max_abs_difference < 1e-9
    assert any("one entry per attention head" in n for n in result.notes)
    with torch.no_grad(), bp.nn.use_posterior_mean(result.model):
        _, presents = result.model(ids)
    assert presents[0][0].shape == (2, 2, 5, block.head_dim)
    path = save_shrunk(result.model, tmp_path / "decoder.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(TinyDecoder(), "gaussian").double())
    assert loaded.blocks[1].num_heads == 2
    torch.testing.assert_close(_run(loaded, ids), _run(result.model, ids), rtol=0, atol=0)


class InterleavedAttention(nn.Module):
    """GPTNeoXAttention's forward: one `query_key_value` whose rows hold, head by head,
    that head's q, k and v; the heads counted by `-1`, merged back by `-1`."""

    def __init__(self) -> None:
        super().__init__()
        self.head_size = WIDTH // HEADS
        self.query_key_value, self.dense = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, hidden: Tensor) -> tuple[Tensor, None]:
        shape = hidden.shape[:-1]
        qkv = self.query_key_value(hidden).view(*shape, -1, 3 * self.head_size).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        out = (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2)
        return self.dense(out.reshape(*shape, -1)), None


class NeoX(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, WIDTH)
        self.attention, self.head = InterleavedAttention(), nn.Linear(WIDTH, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        return self.head((h + self.attention(h)[0]).mean(1))


def test_interleaved_heads_are_units():
    torch.manual_seed(0)
    model, ids = bp.convert(NeoX(), "gaussian").double().eval(), _ids()
    scores = activation_scores(model, (ids,))
    assert scores["attention"].shape == (HEADS,)
    result = shrink_graph(model, (ids,), prune_units={"attention": torch.tensor([1, 0, 0, 1]) > 0})
    small = result.model.attention
    assert small.query_key_value.out_features == 3 * 2 * small.head_size
    assert small.dense.in_features == 2 * small.head_size
    assert result.max_abs_difference < 1e-9
