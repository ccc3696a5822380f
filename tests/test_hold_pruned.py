"""`finetune` keeps the zeros of plain layers at zero, also where a parent reads the weight.

nn.MultiheadAttention reads `out_proj.weight` itself, never calling out_proj's forward:
a mask recomputed by a forward hook (torch.nn.utils.prune) would not run there, and the
second optimiser step would fail on a stale masked weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import hold_pruned


class Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return self.head((h + self.attention(h, h, h, need_weights=False)[0]).mean(1))


def _data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(192, 5, 3, generator=gen)
    return x, (x[:, :, 0].mean(1) > 0).long()


def _loss(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(data[0]), data[1]))


def test_finetune_holds_zeros_read_by_attention_and_learns():
    torch.manual_seed(0)
    model, data = Attend(), _data()
    with torch.no_grad():
        model.attention.out_proj.weight[:, :3] = 0.0
        model.head.weight[0, :4] = 0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = _loss(model, data)
    bp.finetune(model, data, epochs=4, lr=1e-2, batch_size=32, progress=False)
    assert _loss(model, data) < 0.9 * start  # several steps ran, and it learned
    assert (model.attention.out_proj.weight[:, :3] == 0).all()
    assert (model.head.weight[0, :4] == 0).all()
    assert not torch.equal(
        model.attention.out_proj.weight[:, 3:], before["attention.out_proj.weight"][:, 3:]
    )
    assert "attention.out_proj.weight" in dict(model.named_parameters())  # still plain torch


def test_the_gradient_hold_ends_with_the_block():
    torch.manual_seed(0)
    model, (x, y) = Attend(), _data()
    with torch.no_grad():
        model.head.weight[0, :4] = 0.0
    with hold_pruned(model):
        F.cross_entropy(model(x), y).backward()
        assert (model.head.weight.grad[0, :4] == 0).all()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert (model.head.weight.grad[0, :4] != 0).any()
