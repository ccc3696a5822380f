"""Spike-and-slab layers share σ between the training forward pass and the KL."""

import pytest
import torch

from bayesprune.nn import SpikeSlabConv2d, SpikeSlabEdgeLinear, SpikeSlabLinear
from bayesprune.nn.gaussian import _GaussianLayer

LAYERS = {
    "node": lambda: SpikeSlabLinear(4, 3, input_gates=True, prior_inclusion=0.3),
    "node, straight-through": lambda: SpikeSlabLinear(4, 3, gate_estimator="straight_through"),
    "edge": lambda: SpikeSlabEdgeLinear(4, 3, prior_inclusion=0.2),
    "conv": lambda: SpikeSlabConv2d(2, 3, 2, prior_inclusion=0.3),
}


def _loss_and_grads(layer, x, seed, monkeypatch=None, share=True):
    if not share:
        monkeypatch.setattr(_GaussianLayer, "_shares", staticmethod(lambda rho: False))
    torch.manual_seed(seed)
    loss = layer(x).square().sum() + layer.kl()
    grads = torch.autograd.grad(loss, list(layer.parameters()), allow_unused=True)
    if not share:
        monkeypatch.undo()
    return loss.detach(), grads


@pytest.mark.parametrize("name", list(LAYERS))
def test_shared_sigma_gives_the_gradients_of_fresh_sigma(name, monkeypatch):
    layer = LAYERS[name]().double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in layer.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5
                - (1.5 if "rho" in pname else 0)
            )
    shape = (5, 4) if "conv" not in name else (5, 2, 4, 4)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    layer(x)  # a training forward pass leaves σ for the KL
    assert {"weight_rho", "bias_rho"} <= set(layer.__dict__["_scales_cache"])
    shared = _loss_and_grads(layer, x, seed=3)
    assert "weight_rho" not in layer.__dict__.get("_scales_cache", {})  # the KL took it
    fresh = _loss_and_grads(layer, x, seed=3, monkeypatch=monkeypatch, share=False)
    assert torch.allclose(shared[0], fresh[0])
    for a, b in zip(shared[1], fresh[1], strict=True):
        assert (a is None and b is None) or torch.allclose(a, b)
