"""Grouped-query attention (Llama's, Mistral's, Qwen2's): a unit is one key / value head
with the query heads that share it, scored, removed exactly, saved and loaded."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.heads import head_count, head_layout

WIDTH, HEADS, KV_HEADS, SIZE = 16, 4, 2, 4


class Cache:
    """A key / value cache the attention fills and attends over (Hugging Face's
    `past_key_value`): a probe that reused the model's would attend twice the keys."""

    def __init__(self) -> None:
        self.kept: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, k: Tensor, v: Tensor, index: int) -> tuple[Tensor, Tensor]:
        if index in self.kept:
            k, v = (
                torch.cat([old, new], 2) for old, new in zip(self.kept[index], (k, v), strict=True)
            )
        self.kept[index] = (k, v)
        return k, v


class GroupedAttention(nn.Module):
    """LlamaAttention's forward: `view(..., -1, head_dim)`, keys and values repeated for
    the `num_key_value_groups` query heads of each group, the heads merged by `-1`."""

    def __init__(self, index: int, out: str = "o_proj") -> None:
        super().__init__()
        self.index, self.head_dim, self.out = index, SIZE, out  # Phi's output is `dense`
        self.num_key_value_groups = HEADS // KV_HEADS
        self.q_proj = nn.Linear(WIDTH, HEADS * SIZE)
        self.k_proj = nn.Linear(WIDTH, KV_HEADS * SIZE)
        self.v_proj = nn.Linear(WIDTH, KV_HEADS * SIZE)
        setattr(self, out, nn.Linear(HEADS * SIZE, WIDTH))

    def forward(self, hidden: Tensor, past: Cache | None = None) -> tuple[Tensor, None]:
        shape = hidden.shape[:-1]
        split = (*shape, -1, self.head_dim)
        q, k, v = (
            p(hidden).view(split).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        if past is not None:
            k, v = past.update(k, v, self.index)
        k = k.repeat_interleave(self.num_key_value_groups, 1)
        v = v.repeat_interleave(self.num_key_value_groups, 1)
        out = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, -1) @ v
        return getattr(self, self.out)(out.transpose(1, 2).reshape(*shape, -1)), None


class Decoder(nn.Module):
    def __init__(self, out: str = "o_proj") -> None:
        super().__init__()
        self.embed = nn.Embedding(20, WIDTH)
        self.attn = nn.ModuleList([GroupedAttention(i, out) for i in range(2)])
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, ids: Tensor) -> Tensor:
        cache, h = Cache(), self.embed(ids)
        for attn in self.attn:
            h = h + attn(h, past=cache)[0]
        return self.head(h.mean(1))


def _ids() -> Tensor:
    return torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(4))


def _run(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(ids)


@pytest.mark.parametrize("out", ["o_proj", "dense"])
def test_a_unit_is_a_key_value_head_with_its_query_heads(out, tmp_path):
    torch.manual_seed(0)
    model, ids = bp.convert(Decoder(out), "gaussian").double().eval(), _ids()
    scores = activation_scores(model, (ids,))  # proves the layout on the model's own call
    assert head_layout(model.attn[0]) is not None and head_count(model.attn[0]) == KV_HEADS
    assert scores["attn.0"].shape == (KV_HEADS,)
    keep = {"attn.0": torch.tensor([False, True]), "attn.1": torch.tensor([True, False])}
    result = shrink_graph(model, (ids,), prune_units=keep)
    first = result.model.attn[0]
    assert first.q_proj.out_features == getattr(first, out).in_features == 2 * SIZE
    assert first.k_proj.out_features == first.v_proj.out_features == SIZE
    assert result.max_abs_difference < 1e-10  # the value bias of the dropped head is folded
    path = save_shrunk(result.model, tmp_path / "decoder.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Decoder(out), "gaussian").double())
    torch.testing.assert_close(_run(loaded, ids), _run(result.model, ids), rtol=0, atol=0)


def test_keep_units_drops_whole_groups():
    torch.manual_seed(0)
    model, ids = bp.convert(Decoder(), "gaussian").double().eval(), _ids()
    scores = activation_scores(model, (ids,))
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    for attn in result.model.attn:
        assert attn.k_proj.out_features == SIZE and attn.q_proj.out_features == 2 * SIZE
    assert result.max_abs_difference < 1e-10
