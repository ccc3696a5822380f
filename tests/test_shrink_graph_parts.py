"""Models torch.fx cannot trace whole are scored and shrunk in their traceable parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import FAMILIES, TOL, Residual, _bn, _build, _params
from torch import Tensor, nn

from bayesprune.compress import (
    activation_scores,
    keep_units,
    keep_units_for_flops,
    load_shrunk,
    save_shrunk,
    self_compress,
)
from bayesprune.compress.adapters import mask_rows
from bayesprune.compress.graph import GraphShrinkError, GraphTraceError, shrink_graph
from bayesprune.compress.graph_parts import find_parts, record_calls
from bayesprune.nn import use_posterior_mean


class Body(nn.Module):
    """conv-BN-ReLU twice: the middle channels are free, the output is what leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1), _bn(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 3, padding=1), _bn(4)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Scorer(nn.Module):
    """A two-layer MLP head on pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class Detectorish(nn.Module):
    """A detector's shape: the body runs once per image (a Python loop over the batch),
    the head once per image, and a data-dependent filter keeps the confident scores.
    torch.fx traces none of `forward`; `body` and `head` trace on their own."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.head = Scorer()
        self.calibration = nn.Linear(3, 3)  # a prunable layer outside every part

    def forward(self, images: Tensor) -> list[Tensor]:
        out = []
        for image in images:
            scores = self.calibration(self.head(self.body(image[None]).mean((2, 3))))
            out.append(scores[scores.amax(1) > -1e9])  # a filter on the values
        return out


def _forward(model: nn.Module, x: Tensor) -> list[Tensor]:
    model.eval()
    with torch.no_grad(), use_posterior_mean(model):
        return model(x)


def _x(n: int = 3) -> Tensor:
    return torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _close(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=TOL, rtol=TOL)


def test_the_parts_are_the_largest_submodules_that_trace():
    model, x = _build(Detectorish, "gaussian"), _x()
    found = find_parts(model, (x,))
    assert not found.traced and "Detectorish" in found.reason
    assert [(p.name, p.calls) for p in found.parts] == [("body", 3), ("head", 3)]
    assert found.parts[0].inputs[0].shape == (1, 2, 6, 6)  # the first call's argument
    assert found.outside == ["calibration"]
    assert find_parts(model.body, (x,)).traced  # a model that traces is one part
    calls, _ = record_calls(model, (x,), ["body", "head"])  # the search's first run
    assert calls["body"].count == 3 and calls["body"].tensors and calls["body"].call is None


@pytest.mark.parametrize("family", FAMILIES)
def test_shrunk_parts_equal_the_masked_model_on_every_call(family):
    model, x = _build(Detectorish, family), _x()
    keep = {"body.conv1": [0, 2, 5], "head.fc1": [1, 2, 3, 6]}
    result = shrink_graph(model, x, prune_units=keep)
    small = result.model
    assert type(small) is Detectorish and result.parts == ["body", "head"]
    assert small.body.conv1.out_channels == small.body.bn1.num_features == 3
    assert small.body.conv2.in_channels == 3 and small.head.fc1.out_features == 4
    assert small.body.conv2.out_channels == 4 and small.head.fc2.out_features == 3  # kept
    assert _params(small) < _params(model)
    assert "shrunk in parts" in result.notes[0] and "calibration" in result.notes[0]
    assert {r.name for r in result.layers} >= {"body.conv1", "head.fc1"}
    assert result.shapes["body.conv1"]["out_channels"] == 3
    masked = _build(Detectorish, family)  # the same model, the dropped units masked
    mask_rows(masked, "body.conv1", [1, 3, 4])
    mask_rows(masked, "head.fc1", [0, 4, 5, 7])
    with torch.no_grad():  # and BatchNorm's channels after them zeroed (result.notes)
        masked.body.bn1.weight[[1, 3, 4]] = masked.body.bn1.bias[[1, 3, 4]] = 0.0
    _close(_forward(small, x), _forward(masked, x))
    assert result.max_abs_difference is not None and result.max_abs_difference < TOL


def test_scores_keep_and_shrink_an_untraceable_model_end_to_end():
    model, x = _build(Detectorish, "spike_slab"), _x(8)
    scores = activation_scores(model, x)
    assert set(scores) == {"body.conv1", "body.conv2", "head.fc1", "head.fc2"}
    assert torch.isinf(scores["body.conv2"]).all() and torch.isinf(scores["head.fc2"]).all()
    assert torch.isfinite(scores["body.conv1"]).all() and torch.isfinite(scores["head.fc1"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, 0.5))
    assert result.model.body.conv1.out_channels == 3 and result.model.head.fc1.out_features == 4
    assert result.max_abs_difference < TOL


def test_a_part_reads_its_scores_from_every_call():
    """The head reads one row per call (one image): its input's spread exists only
    across the calls, so scores from the first call alone would all be 0."""
    model = _build(Detectorish, "gaussian")
    scores = activation_scores(model, _x(3))
    assert (scores["head.fc1"] > 0).any()


def test_a_flops_budget_on_an_untraceable_model():
    model, x = _build(Detectorish, "gaussian"), _x(8)
    found = keep_units_for_flops(model, activation_scores(model, x), x[:2], 0.8)
    assert found.ratio <= 0.8 and found.sparsity > 0
    small = shrink_graph(model, x[:2], prune_units=found.masks).model
    assert small.body.conv1.out_channels < 6


def test_self_compress_takes_an_untraceable_model():
    model, x = _build(Detectorish, "gaussian"), _x(8)
    result = self_compress(
        model, lambda m: {"accuracy": 1.0}, example_inputs=x[:2], score="activation",
        score_data=x, fraction=0.5, max_rounds=1,
    )  # fmt: skip
    small = result.model
    assert small.body.conv1.out_channels == 3 and small.head.fc1.out_features == 4
    assert small.calibration.in_features == 3  # outside the parts: whole


def test_units_outside_the_parts_and_input_pruning_are_refused():
    model, x = _build(Detectorish, "gaussian"), _x()
    with pytest.raises(ValueError, match=r"'calibration'.*outside every part.*body, head"):
        shrink_graph(model, x, prune_units={"calibration": [0, 1]})
    with pytest.raises(ValueError, match=r"unknown module 'nope'"):
        shrink_graph(model, x, prune_units={"nope": [0]})
    with pytest.raises(ValueError, match=r"prune_inputs needs the whole forward traced"):
        shrink_graph(model, x, prune_inputs=True)


class Branchy(nn.Module):
    """A branch on a tensor's value, around a residual network that traces."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Residual()

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        return y if y.sum() > 0 else -y


def test_a_traceable_submodule_of_a_branching_forward_is_shrunk():
    model = _build(Branchy, "sparse_vd")
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = shrink_graph(model, x, prune_units={"net.conv1": [0, 1, 2]})
    assert result.parts == ["net"] and result.model.net.conv1.out_channels == 3
    assert result.max_abs_difference < TOL


class Keyworded(nn.Module):
    """A part called with a keyword constant is bound to it (`scale=2.0`)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Wrapper()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x, scale=2.0) if x.sum() != 0 else x


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Body()

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return self.body(x) * scale


def test_a_submodule_called_with_a_keyword_constant_is_a_part_bound_to_it():
    model, x = _build(Keyworded, "gaussian"), _x()
    (part,) = find_parts(model, (x,)).parts
    assert part.name == "inner" and part.call.constants == {"scale": 2.0}
    with torch.no_grad(), use_posterior_mean(model):
        with part.bound():
            bound = part.module(*part.inputs)
        torch.testing.assert_close(bound, 2.0 * model.inner.body(*part.inputs))


class Layerless(nn.Module):
    """Nothing inside traces: the loop is in the only module that holds the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.b(F.relu(self.a(row))) for row in x])


def test_no_traceable_part_is_the_trace_error_with_its_fix():
    with pytest.raises(GraphTraceError, match=r"leaf_modules.*no submodule of Layerless"):
        shrink_graph(Layerless(), torch.randn(2, 3))


def test_a_model_shrunk_in_parts_saves_and_loads_into_its_own_class(tmp_path):
    model, x = _build(Detectorish, "gaussian"), _x()
    small = shrink_graph(model, x, prune_units={"body.conv1": [0, 2, 5]}).model
    path = save_shrunk(small, tmp_path / "small.safetensors")
    loaded = load_shrunk(path, lambda: _build(Detectorish, "gaussian"))
    assert loaded.body.conv1.out_channels == 3
    _close(_forward(loaded, x), _forward(small, x))


class Leaky(nn.Module):
    """The forward also calls a layer of `body` itself: narrowing `body.conv1` would
    change that outside call, so `body` is no part (and nothing else traces around it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.head = Scorer()

    def forward(self, x: Tensor) -> Tensor:
        side = self.body.conv1(x).mean((1, 2, 3))  # all six channels, read from outside
        y = self.head(self.body(x).mean((2, 3)))
        return y + side[:, None] if side.sum() != 0 else y


def test_a_block_whose_layer_is_called_from_outside_is_no_part():
    model, x = _build(Leaky, "gaussian"), _x()
    found = find_parts(model, (x,))
    assert [p.name for p in found.parts] == ["head"]
    assert "body.conv1" in found.outside
    result = shrink_graph(model, x)
    assert result.model.body.conv1.out_channels == 6 and result.max_abs_difference < TOL
    with pytest.raises(ValueError, match=r"'body.conv1'.*outside every part"):
        shrink_graph(model, x, prune_units={"body.conv1": [0, 1, 2]})


class ReadsAWidth(nn.Module):
    """Code outside the part reads a width inside it: shrinking changes the output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x).mean((2, 3)) * self.body.conv1.out_channels
        return y if y.sum() != 0 else -y


def test_the_check_catches_outside_code_that_reads_a_shrunk_width():
    model, x = _build(ReadsAWidth, "gaussian"), _x()
    with pytest.raises(GraphShrinkError, match=r"code outside the parts reads"):
        shrink_graph(model, x, prune_units={"body.conv1": [0, 1, 2]})
    result = shrink_graph(model, x, prune_units={"body.conv1": [0, 1, 2]}, check=False)
    assert result.max_abs_difference > 1e-3


class Filtering(nn.Module):
    """The head reads only the images that pass a filter on the values, here none (a
    detector's mask head when no box passes the score threshold)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.head = Scorer()

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.body(x).mean((2, 3))
        chosen = pooled[pooled.sum(1) > 1e9]
        return self.head(chosen) if len(chosen) < 1e9 else chosen  # untraceable


def test_a_part_the_data_never_reaches_is_left_unscored():
    model, x = _build(Filtering, "gaussian"), _x(4)
    with pytest.warns(UserWarning, match=r"never gave part 'head' a row"):
        scores = activation_scores(model, x)
    assert set(scores) == {"body.conv1", "body.conv2"}
    result = shrink_graph(model, x, prune_units=keep_units(scores, 0.5))
    assert result.model.body.conv1.out_channels == 3 and result.model.head.fc1.out_features == 8


class Shared(nn.Module):
    """Two blocks hold one convolution (weight sharing): narrowing it inside either block
    would change the other's call, so neither block is a part."""

    def __init__(self) -> None:
        super().__init__()
        self.one, self.two = Body(), Body()
        self.two.conv1 = self.one.conv1  # the same module object, registered twice

    def forward(self, x: Tensor) -> Tensor:
        y = self.one(x) + self.two(x)
        return y if y.sum() != 0 else -y


def test_blocks_that_share_a_module_are_no_parts():
    torch.manual_seed(0)
    model, x = Shared().double(), _x()  # plain layers: convert would give each its own copy
    assert model.one.conv1 is model.two.conv1
    with pytest.raises(GraphTraceError, match="no submodule"):
        find_parts(model, (x,))


class SometimesEmpty(nn.Module):
    """The head's first call gets no rows (none passes the filter), the others do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.head = Scorer()

    def forward(self, x: Tensor) -> list[Tensor]:
        pooled = self.body(x).mean((2, 3))
        out = [self.head(pooled[:0])]  # an empty call first
        out += [self.head(pooled[i : i + 1]) for i in range(len(pooled))]
        return out if len(out) < 1e9 else out[:1]  # untraceable


def test_an_empty_call_does_not_spoil_a_part_scores():
    model, x = _build(SometimesEmpty, "gaussian"), _x(4)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["head.fc1"]).all() and (scores["head.fc1"] > 0).any()


class SharedProjection(nn.Module):
    """DeBERTa's pattern: one projection reads the tokens and a table of relative
    positions in the same pass, in a forward that checks a shape (a valued trace), with
    a small traceable head; most layers are the model's own children."""

    def __init__(self) -> None:
        super().__init__()
        self.positions = nn.Parameter(torch.randn(5, 8))
        self.proj, self.up, self.down = nn.Linear(8, 8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError("tokens: batch x length x 8")
        tokens, places = self.proj(x), self.proj(self.positions)
        h = torch.softmax(tokens @ places.T, -1) @ places
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h.mean(1))


def test_a_module_called_twice_in_a_valued_trace_keeps_the_model_whole():
    """Parts would hold the head alone; the whole valued graph holds every layer."""
    model, x = _build(SharedProjection, "gaussian"), torch.randn(3, 5, 8).double()
    found = find_parts(model, (x,))
    assert found.traced and found.parts[0].name == ""
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["up"]).all()  # the main path's units, not only the head's
    result = shrink_graph(model, x, prune_units={"up": keep_units(scores, 0.5)["up"]})
    assert result.model.up.out_features == 8 and result.max_abs_difference < TOL
