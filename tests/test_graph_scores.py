"""activation_scores / keep_units: sd × outgoing norm per unit on chains and graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bayesprune import convert
from bayesprune.compress import activation_scores, keep_units, shrink_graph, width_scores
from bayesprune.validation import required_inputs


class Residual(nn.Module):
    """stem conv-BN, a block conv1-BN-ReLU-conv2-BN + identity, depthwise, pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv1, self.bn1 = nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5)
        self.conv2, self.bn2 = nn.Conv2d(5, 6, 1), nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, groups=6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        x = F.relu(self.dw(x))
        return self.head(x.mean((2, 3)))


def _residual(family: str = "gaussian") -> nn.Module:
    torch.manual_seed(0)
    model = convert(Residual(), family).double().eval()
    for bn in (model.bn0, model.bn1, model.bn2):  # eval statistics that are not the identity
        bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("family", ["deterministic", "gaussian", "sparse_vd", "spike_slab"])
def test_dead_units_rank_last_and_residual_channels_share_a_score(family):
    model = _residual(family)
    with torch.no_grad():
        model.bn1.bias.fill_(2.0)  # every unit alive (relu of a positive pre-activation)...
        model.bn1.bias[1] = -50.0  # ...but unit 1: relu(...) = 0 everywhere, no variance
        w = model.conv2.weight_mu if family != "deterministic" else model.conv2.weight
        w[:, 3] = 0.0  # unit 3 of conv1: no outgoing weight
        mask = getattr(model.conv2, "weight_mask", None)
        if mask is not None:
            mask[:, 3] = 1.0
    x = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert list(scores) == ["stem", "conv1", "conv2", "head"]
    conv1 = scores["conv1"]
    assert conv1[1] == 0 and conv1[3] == 0
    assert set(conv1.argsort()[:2].tolist()) == {1, 3}  # ranked last (lowest)
    assert (conv1[[0, 2, 4]] > 0).all()
    torch.testing.assert_close(scores["stem"], scores["conv2"])  # one residual channel each
    assert torch.isinf(scores["head"]).all()  # the model's outputs are not for removal


def test_a_chain_gives_the_activation_width_score():
    torch.manual_seed(0)
    model = convert(
        nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2)),
        "gaussian",
    ).double()
    x = torch.randn(50, 4, dtype=torch.float64)
    scores = activation_scores(model, x)
    chain = width_scores(model, "activation", x)  # [inputs, hidden 1, hidden 2]
    population = ((len(x) - 1) / len(x)) ** 0.5  # torch.std is the unbiased one
    torch.testing.assert_close(scores["0"], chain[1] * population)
    torch.testing.assert_close(scores["2"], chain[2] * population)


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 3, 3), nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(torch.tanh(self.conv(x)), 1))


def test_brute_force_across_a_flatten_and_a_data_loader():
    torch.manual_seed(0)
    model = Flat().double()
    x = torch.randn(40, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        cols = torch.flatten(torch.tanh(model.conv(x)), 1)
    part = cols.var(0, unbiased=False) * model.fc.weight.square().sum(0)
    expected = part.view(3, 16).sum(1).sqrt()
    loader = DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=16)
    torch.testing.assert_close(activation_scores(model, loader)["conv"], expected)
    torch.testing.assert_close(activation_scores(model, x)["conv"], expected)
    first_two = activation_scores(model, loader, max_batches=2)["conv"]
    torch.testing.assert_close(first_two, activation_scores(model, x[:32])["conv"])


class Grouped(nn.Module):
    """ResNeXt's shape: a 1×1 conv, a grouped 3×3 conv (2 groups of 3 → 2), a 1×1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.b = (
            nn.Conv2d(2, 6, 1),
            nn.Conv2d(6, 4, 3, groups=2),
            nn.Conv2d(4, 3, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.g(torch.tanh(self.a(x))))).mean((2, 3))


def test_a_grouped_convolution_reads_each_column_in_its_own_group_only():
    torch.manual_seed(0)
    model = Grouped().double()
    x = torch.randn(20, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        a = torch.tanh(model.a(x))
        cols = a.transpose(0, 1).flatten(1)  # (6 channels, positions)
        outs = torch.tanh(model.g(a)).transpose(0, 1).flatten(1)  # (4, positions), read by b
    w = model.g.weight  # (4, 3, 3, 3): outputs 0-1 read channels 0-2, outputs 2-3 read 3-5
    norms = torch.cat([w[:2].transpose(0, 1).flatten(1), w[2:].transpose(0, 1).flatten(1)])
    read_by_g = (cols.std(1, unbiased=False) * norms.norm(dim=1)).square().view(2, 3).sum(1)
    read_by_b = (outs.std(1, unbiased=False) * model.b.weight.flatten(1).norm(dim=0)).square()
    # a group goes whole: its input channels and its output channels share one score
    expected = (read_by_g + read_by_b.view(2, 2).sum(1)).sqrt().repeat_interleave(3)
    scores = activation_scores(model, x)
    torch.testing.assert_close(scores["a"], expected)
    keep = keep_units(scores, widths={"a": 3, "g": 2})  # one group: its inputs and outputs
    small = shrink_graph(model, x[:2], prune_units=keep).model
    assert small.a.out_channels == 3 and small.g.groups == 1 and small.g.out_channels == 2


def test_keep_units_feeds_shrink_graph():
    model = _residual()
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    scores = activation_scores(model, x)
    keep = keep_units(scores, 0.4)
    assert keep["conv1"].sum() == 3 and keep["head"].all()
    assert torch.equal(keep["stem"], keep["conv2"])  # equal scores: the same channels kept
    result = shrink_graph(model, x, prune_units=keep)
    assert result.model.conv1.out_channels == 3
    assert result.model.stem.out_channels == result.model.dw.groups == 4
    by_width = keep_units(scores, widths={"conv1": 1})
    assert by_width["conv1"].sum() == 1 and by_width["stem"].all()
    assert keep_units({"a": torch.zeros(3)}, widths={"a": 0})["a"].sum() == 1  # one stays
    with pytest.raises(ValueError, match="either sparsity"):
        keep_units(scores)
    with pytest.raises(ValueError, match="without scores"):
        keep_units(scores, widths={"nope": 1})
    with pytest.raises(ValueError, match="no batch"):
        activation_scores(model, [])


def test_the_module_does_not_shadow_compress_unit_scores():
    from bayesprune import compress

    assert callable(compress.unit_scores) and callable(compress.activation_scores)


def test_global_ranks_across_layers_on_each_layers_own_scale():
    evenly = torch.tensor([100.0, 100.0, 100.0, 100.0])  # every unit matters alike...
    tail = torch.tensor([1.0, 2.0, 3.0, 4.0])  # ...here two are weak against the others
    scores = {"even": evenly, "tail": tail}
    per_layer = keep_units(scores, 0.25)
    assert per_layer["even"].sum() == 3 and per_layer["tail"].sum() == 3
    glob = keep_units(scores, 0.25, scope="global")
    assert glob["even"].all()  # the two weakest units of all are both in "tail"
    assert glob["tail"].tolist() == [False, False, True, True]
    rescaled = keep_units({"even": evenly / 1e4, "tail": tail}, 0.25, scope="global")
    assert all(torch.equal(rescaled[k], glob[k]) for k in glob)  # raw scale does not count
    assert keep_units(scores, 0.0, scope="global")["tail"].all()


def test_global_never_splits_a_residual_group():
    # a naive unit-by-unit ranking would drop stream units 0, 0 and then 1 of one layer only
    stream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scores = {"a": stream, "b": stream.clone(), "inner": torch.ones(4)}
    keep = keep_units(scores, 0.25, scope="global")  # 3 of 12 layer-units
    assert torch.equal(keep["a"], keep["b"])
    assert keep["a"].tolist() == [False, True, True, True]
    assert sum(int((~m).sum()) for m in keep.values()) == 3
    from bayesprune.compress.graph_scores import _keep_global

    stream = torch.tensor([3.0, 4.0, 5.0, 6.0])  # normalised 0.67-1.33, x2 layers: above 1
    scores = {"a": stream, "b": stream.clone(), "inner": torch.ones(4)}
    assert not keep_units(scores, 0.25, scope="global")["a"].all()
    wide = _keep_global(scores, 0.25, by_members=True)  # the benchmark's "streams" variant
    assert wide["a"].all() and wide["b"].all() and wide["inner"].sum() == 1
    model = _residual()  # stem and conv2 share the residual channels
    x = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    scores = activation_scores(model, x)
    for sparsity in (0.1, 0.3, 0.5, 0.7, 0.9):
        keep = keep_units(scores, sparsity, scope="global")
        assert torch.equal(keep["stem"], keep["conv2"]) and keep["head"].all()
        assert all(m.any() for m in keep.values())
        result = shrink_graph(model, x, prune_units=keep)
        assert result.model.stem.out_channels == result.model.conv2.out_channels


def test_global_keeps_pinned_units_and_one_per_layer():
    scores = {"dead": torch.zeros(3), "pinned": torch.full((2,), float("inf"))}
    keep = keep_units(scores, 0.9, scope="global")
    assert keep["dead"].sum() == 1 and keep["pinned"].all()
    with pytest.raises(ValueError, match="scope must be"):
        keep_units(scores, 0.5, scope="stage")
    with pytest.raises(ValueError, match="widths are per layer"):
        keep_units(scores, widths={"dead": 1}, scope="global")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        keep_units(scores, 1.0, scope="global")


class TwoInputs(nn.Module):
    """An image branch and a metadata branch joined by addition: forward(x, meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc_meta = nn.Linear(3, 6)
        self.hidden, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor, meta: Tensor) -> Tensor:
        image = F.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.head(F.relu(self.hidden(image + self.fc_meta(meta))))


def test_a_model_with_several_inputs_is_scored_on_each_batch_s_inputs():
    torch.manual_seed(0)
    model = convert(TwoInputs(), "gaussian").eval()
    x, meta, y = torch.randn(40, 2, 5, 5), torch.randn(40, 3), torch.randint(0, 3, (40,))
    whole = activation_scores(model, (x, meta), inputs=2)  # one batch of both inputs
    loader = DataLoader(TensorDataset(x, meta, y), batch_size=16)  # (x, meta, y) batches
    batched = activation_scores(model, loader, inputs=2)
    assert set(whole) == {"conv", "fc_meta", "hidden", "head"}
    for name in whole:
        torch.testing.assert_close(batched[name], whole[name])
    torch.testing.assert_close(whole["conv"], whole["fc_meta"])  # joined by the addition
    assert torch.isfinite(whole["hidden"]).all() and (whole["hidden"] > 0).all()
    keep = keep_units(whole, sparsity=0.5)
    small = shrink_graph(model, (x[:4], meta[:4]), prune_units=keep).model
    assert small.hidden.out_features == 4 and small.conv.out_channels == 3
    with pytest.raises(TypeError, match="forward's 2 input tensor"):
        activation_scores(model, x, inputs=2)  # the metadata is missing
    counted = activation_scores(model, loader)  # inputs: what forward requires, 2
    for name in whole:
        torch.testing.assert_close(counted[name], whole[name])
    with pytest.raises(TypeError, match="forward's 2 input tensor"):
        activation_scores(model, x)


def test_the_inputs_a_forward_requires():
    class Optional(nn.Module):
        def forward(self, x: Tensor, mask: Tensor | None = None, *, scale: float = 1.0):
            return x

    class Star(nn.Module):
        def forward(self, *args: Tensor) -> Tensor:
            return args[0]

    assert required_inputs(TwoInputs()) == 2
    assert required_inputs(Optional()) == 1 and required_inputs(Star()) == 1


def test_self_compress_scores_a_model_with_several_inputs_by_its_example():
    from bayesprune.compress import self_compress
    from bayesprune.nn import use_posterior_mean

    torch.manual_seed(0)
    model = convert(TwoInputs(), "gaussian").eval()
    x, meta = torch.randn(40, 2, 5, 5), torch.randn(40, 3)
    y = model(x, meta).argmax(1).detach()

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad(), use_posterior_mean(m):
            return {"accuracy": float((m(x, meta).argmax(1) == y).double().mean())}

    result = self_compress(
        model, evaluate, None, example_inputs=(x[:4], meta[:4]), score="activation",
        score_data=(x, meta), fraction=0.25, tolerance=1.0, max_rounds=1,
    )  # fmt: skip
    assert result.model.hidden.out_features < 8  # a round cut units, scored on both inputs
