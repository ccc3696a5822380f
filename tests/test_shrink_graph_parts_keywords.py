"""A model whose own forward does not trace (a selection by value) and that calls its
backbone with keyword constants (Hugging Face's classifiers: `return_dict=True`): the
backbone is a part, bound to those constants, traced with the values of its inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_parts import find_parts


class Backbone(nn.Module):
    """Branches on its input's shape (no symbolic trace) and on keyword options."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(4, 16), nn.Linear(16, 8)
        self.alt_up, self.alt_down = nn.Linear(4, 16), nn.Linear(16, 8)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        double: bool = False,
        as_dict: bool = False,
        path: str = "main",
    ) -> Tensor | dict[str, Tensor]:
        if x.dim() == 3:
            x = x.mean(1)
        if mask is not None:
            x = x * mask
        up, down = (self.up, self.down) if path == "main" else (self.alt_up, self.alt_down)
        h = down(torch.relu(up(x)))
        h = h * 2.0 if double else h
        return {"hidden": h} if as_dict else h


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = Backbone(), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.backbone(x, mask=None, double=True, as_dict=True, path="alt")["hidden"]
        if bool(h.isnan().any()):  # a branch on a value: the model does not trace whole
            raise ValueError("the backbone gave NaN")
        return self.head(h)


def test_a_backbone_called_with_keyword_constants_is_a_part_bound_to_them():
    torch.manual_seed(0)
    model, x = bp.convert(Classifier(), "gaussian").double().eval(), torch.randn(5, 4).double()
    found = find_parts(model, (x,))
    backbone = next(p for p in found.parts if p.name == "backbone")
    assert backbone.call.constants == {"mask": None, "double": True, "as_dict": True, "path": "alt"}
    scores = activation_scores(model, x)  # the layers the call uses, not the default's
    assert torch.isfinite(scores["backbone.alt_up"]).all() and "backbone.up" not in scores
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.backbone.alt_up.out_features == 8 and "backbone" in result.parts
    assert result.model.backbone.up.out_features == 16
    assert result.max_abs_difference < 1e-10
    assert type(result.model.backbone) is Backbone  # the binding is gone again
    with torch.no_grad(), bp.nn.use_posterior_mean(result.model):
        assert result.model(torch.randn(2, 4).double()).shape == (2, 3)


def test_a_call_with_a_tensor_by_keyword_is_a_part_taking_it_by_position():
    """A tensor passed by keyword (a mask) is one more input of the part, handed on by name."""

    class ByKeyword(Classifier):
        def forward(self, x: Tensor) -> Tensor:
            h = self.backbone(x, mask=(x > 0).to(x), as_dict=False, path="alt")
            if bool(h.isnan().any()):
                raise ValueError("the backbone gave NaN")
            return self.head(h)

    torch.manual_seed(1)
    model, x = bp.convert(ByKeyword(), "gaussian").double().eval(), torch.randn(5, 4).double()
    backbone = next(p for p in find_parts(model, (x,)).parts if p.name == "backbone")
    assert list(backbone.call.keywords) == ["mask"] and len(backbone.inputs) == 2
    assert backbone.call.constants == {"as_dict": False, "path": "alt"}
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["backbone.alt_up"]).all() and "backbone.up" not in scores
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.5))
    assert result.parts == ["backbone"] and result.model.backbone.alt_up.out_features == 8
    assert result.max_abs_difference < 1e-10
    assert type(result.model.backbone) is Backbone
    with torch.no_grad(), bp.nn.use_posterior_mean(model):  # the mask is read, not dropped
        assert not torch.allclose(model(x), model.head(model.backbone(x, path="alt")))
