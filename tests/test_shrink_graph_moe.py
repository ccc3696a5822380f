"""A sparse mixture of experts (Mixtral's block): each expert's units go, and the residual
stream narrows through the buffer the experts add into, sized by the width it reads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = (
            nn.Linear(dim, hidden),
            nn.Linear(hidden, dim),
            nn.Linear(dim, hidden),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """Hugging Face's `MixtralSparseMoeBlock`: the tokens routed to their top-k experts,
    each expert's output added into a buffer of zeros as wide as the input."""

    def __init__(
        self, dim: int = 8, hidden: int = 12, experts: int = 4, top_k: int = 2, fill: float = 0.0
    ) -> None:
        super().__init__()
        self.top_k, self.fill = top_k, fill
        self.gate = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))

    def forward(self, hidden: Tensor) -> Tensor:
        batch, length, width = hidden.shape
        hidden = hidden.view(-1, width)
        weights = F.softmax(self.gate(hidden), dim=1, dtype=torch.float)
        weights, chosen = torch.topk(weights, self.top_k, dim=-1)
        weights /= weights.sum(dim=-1, keepdim=True)
        weights = weights.to(hidden.dtype)
        out = torch.full((batch * length, width), self.fill, dtype=hidden.dtype)
        mask = F.one_hot(chosen, num_classes=len(self.experts)).permute(2, 1, 0)
        for i, expert in enumerate(self.experts):
            idx, rows = torch.where(mask[i])
            current = hidden[None, rows].reshape(-1, width)
            out.index_add_(0, rows, (expert(current) * weights[rows, idx, None]).to(hidden.dtype))
        return out.reshape(batch, length, width)


class Decoder(nn.Module):
    """Tokens → the stream → a norm and the experts, added back → a head. `branch`: a
    forward that branches on a value, so that only a trace with values goes through."""

    def __init__(self, branch: bool = False, fill: float = 0.0) -> None:
        super().__init__()
        self.branch = branch
        self.embed, self.norm = nn.Linear(5, 8), nn.LayerNorm(8)
        self.moe, self.head = SparseMoE(fill=fill), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.branch and x.shape[1] > 64:
            raise ValueError("too long")
        h = self.embed(x)
        h = h + self.moe(self.norm(h))
        return self.head(h.mean(1))


def _tokens() -> Tensor:
    return torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("branch", [False, True])
@pytest.mark.parametrize("family", ["gaussian", "spike_slab"])
def test_the_experts_and_the_stream_narrow_together(family, branch):
    torch.manual_seed(0)
    model = bp.convert(Decoder(branch), family).double().eval()
    x = _tokens()
    scores = activation_scores(model, x)
    assert {"embed", "moe.experts.0.w1", "moe.experts.3.w1"} <= set(scores)
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25), check=True)
    small = result.model
    assert small.embed.out_features < 8  # the stream
    assert small.moe.gate.in_features == small.embed.out_features
    assert all(e.w2.out_features == small.embed.out_features for e in small.moe.experts)
    assert small.moe.experts[0].w1.out_features < 12  # an expert's units
    assert result.max_abs_difference < 1e-9
    y = torch.randn(2, 9, 5, dtype=torch.float64)  # another length: the buffer follows
    with bp.nn.use_posterior_mean(small):
        assert small(y).shape == (2, 3)


def test_a_buffer_of_ones_folds_into_the_head_exactly():
    """Removed channels of a buffer filled with ones carry a constant (1) through the
    stream: it must reach the masked and the shrunk model alike (folded, or kept)."""
    torch.manual_seed(1)
    model = bp.convert(Decoder(fill=1.0), "gaussian").double().eval()
    x = _tokens()
    scores = activation_scores(model, x)
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25), check=True)
    assert result.max_abs_difference < 1e-9
    assert result.model.moe.experts[0].w1.out_features < 12
    assert result.model.embed.out_features < 8  # the stream too: its constants folded
