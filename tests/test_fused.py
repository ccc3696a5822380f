"""The hand-written autograd nodes of `bayesprune.nn.fused` against their plain twins."""

import math

import pytest
import torch

from bayesprune.nn import fused

CASES = {
    "softplus_scales": lambda a, b: sum((t * b).sum() for t in fused.softplus_scales(a)),
    "gaussian_kl": lambda a, b: fused.gaussian_kl(a, b.abs() + 0.01, 0.7),
    "mixture_kl_bound": lambda a, b: fused.mixture_kl_bound(
        a * 0.02, b.abs() * 0.01 + 1e-3, 0.3, 1.0, math.exp(-6)
    ),
    "mixture_kl_sampled": lambda a, b: fused.mixture_kl_sampled(
        a * 0.02, b.abs() * 0.01 + 1e-3, 0.3, 1.0, math.exp(-6)
    ),
    "sample_normal": lambda a, b: (fused.sample_normal(a, b.square()) * a.cos()).sum(),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_node_matches_its_plain_autograd_twin(name, monkeypatch):
    """Values and gradients of the node (eager) and of the formula torch.func runs."""

    def run(eager):
        monkeypatch.setattr(fused, "eager", lambda: eager)
        g = torch.Generator().manual_seed(0)
        a = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_()
        b = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_()
        torch.manual_seed(1)  # the same noise for both
        value = CASES[name](a, b)
        return value.detach(), torch.autograd.grad(value, (a, b))

    (node, node_grads), (plain, plain_grads) = run(True), run(False)
    assert torch.allclose(node, plain)
    assert all(torch.allclose(n, p) for n, p in zip(node_grads, plain_grads, strict=True))


def test_nodes_give_way_to_plain_autograd_inside_torch_func():
    rho = torch.randn(3, 2, requires_grad=True)
    sigma, var = torch.func.vmap(fused.softplus_scales)(rho)  # the node would raise here
    assert torch.allclose(var, sigma.square())
    assert fused.eager()  # outside a transform the nodes apply
