"""shrink_graph on torchvision's resnet18, mobilenet_v3_small, vgg11_bn and densenet121
(and, scored and shrunk by keep_units, resnext50_32x4d, regnet_y_400mf and
efficientnet_b0).

Random weights, BatchNorms in eval mode with random running statistics (so removed
channels emit non-zero constants that must be folded), float64, 1-2 images of 32×32.
Each model is converted to every Bayesian family; units are killed in chosen layers
(masked incoming weights, or gates off for spike-and-slab); the shrunk model must equal
the masked one to 1e-5 in posterior-mean mode, lose exactly the channels the plan says
it can, keep the ones it cannot fold exactly (of several read by the same layers, one,
which carries the others' constants: `compress.graph_merge`), and stay Bayesian.

A kill "silenced" also sets the following BatchNorm's β far below zero, so the channel
is exactly 0 after the activation: that is how a channel read by a zero-padded 3×3
convolution can go (a non-zero constant would meet the border). The other kills carry
a non-zero constant that must be folded into a bias or a BatchNorm's running mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from _torchvision import import_torchvision_models
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import activation_scores as compress_scores
from bayesprune.compress import apply_masks, unit_weight_masks
from bayesprune.compress import keep_units as keep
from bayesprune.compress.graph import GraphShrinkResult, shrink_graph
from bayesprune.nn import GatedLayer, VariationalLayer, use_posterior_mean

TOL = 1e-5
FAMILIES = ["gaussian", "sparse_vd", "spike_slab"]
# the two larger models run every family in the slow set, Gaussian in the fast one
SLOW_FAMILIES = ["gaussian", *(pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES[1:])]


@dataclass
class Plan:
    """What to kill and what the shrunk model must then look like."""

    kill: dict[str, list[int]] = field(default_factory=dict)  # layer → dead units
    silence: dict[str, list[int]] = field(default_factory=dict)  # BatchNorm → β = −50
    removed: dict[str, list[int]] = field(default_factory=dict)  # layer → units that must go
    kept: dict[str, list[int]] = field(default_factory=dict)  # layer → dead units that stay
    carried: dict[str, list[int]] = field(default_factory=dict)
    """layer → dead units that cannot fold, read by the same layers: one stays, carrying
    the others' constants, and the others go."""


def _pick(gen: torch.Generator, n: int, fraction: float = 0.25) -> list[int]:
    k = max(1, int(n * fraction))
    return sorted(torch.randperm(n, generator=gen)[:k].tolist())


def _units(model: nn.Module, layer: str) -> int:
    m = model.get_submodule(layer)
    return (m.weight_mu if hasattr(m, "weight_mu") else m.weight).shape[0]


def _randomise_batchnorms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.1, 0.5)
                m.running_mean.uniform_(-0.3, 0.0)  # and μ ≤ 0: β − γμ/σ > 0
                m.running_var.uniform_(0.5, 2.0)


def _kill(model: nn.Module, layer: str, units: list[int]) -> None:
    """Units emit no input-dependent value: gates off (spike-and-slab) or rows masked."""
    target = model.get_submodule(layer)
    if isinstance(target, GatedLayer) and target.unit_inclusion() is not None:
        pip = target.unit_inclusion().clone()
        pip[units] = 0.05
        target.set_inclusion(units=pip)
        return
    keep = torch.ones(_units(model, layer))
    keep[units] = 0.0
    apply_masks(model, unit_weight_masks(model, {layer: keep}))


def _prepare(plain: nn.Module, family: str, plan: Plan) -> nn.Module:
    _randomise_batchnorms(plain)
    model = convert(plain.double().eval(), family).double().eval()
    for _, m in model.named_modules():
        if isinstance(m, GatedLayer) and m.unit_inclusion() is not None:
            m.set_inclusion(units=torch.full_like(m.unit_inclusion(), 0.9))
    for layer, units in plan.kill.items():
        _kill(model, layer, units)
    for bn, channels in plan.silence.items():
        with torch.no_grad():
            model.get_submodule(bn).bias[channels] = -50.0
    return model


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), use_posterior_mean(model):
        return model.eval()(x)


def _check(model: nn.Module, x: Tensor, plan: Plan) -> GraphShrinkResult:
    """(a) shrunk == masked, (b) the planned channels go and the others stay, (c) Bayesian."""
    result = shrink_graph(model, example_inputs=x, check=True)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    records = {r.name: r for r in result.layers}
    for layer, units in plan.removed.items():
        n = records[layer].units_before
        assert records[layer].kept_units == sorted(set(range(n)) - set(units)), layer
    for layer, units in plan.kept.items():
        assert set(units) <= set(records[layer].kept_units), layer
        assert records[layer].kept_dead_units >= len(units), layer
    for layer, units in plan.carried.items():
        n, record = records[layer].units_before, records[layer]
        carrier = set(units) & set(record.kept_units)
        assert len(carrier) == 1, layer
        assert record.kept_units == sorted((set(range(n)) - set(units)) | carrier), layer
        assert (record.kept_dead_units, record.merged_units) == (1, len(units) - 1), layer
    params = sum(p.numel() for p in result.model.parameters())
    assert params < sum(p.numel() for p in model.parameters())
    for name, module in model.named_modules():
        if isinstance(module, VariationalLayer):
            assert type(result.model.get_submodule(name)) is type(module), name
    return result


# -- resnet18 ---------------------------------------------------------------------------
def _resnet18_plan(model: nn.Module) -> Plan:
    gen, plan = torch.Generator().manual_seed(1), Plan()
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            conv, bn = f"layer{stage}.{block}.conv1", f"layer{stage}.{block}.bn1"
            units = _pick(gen, _units(model, conv))
            plan.kill[conv] = units
            if (stage, block) == (4, 1):
                # not silenced: the constant meets layer4.1.conv2's padded border (on a
                # 1×1 map here, so only the size-free probe can see it): no bias takes
                # it, one unit carries them all
                plan.carried[conv] = units
            else:
                plan.silence[bn], plan.removed[conv] = units, units
    # the last stage's residual stream: dead in all three producers; silenced after
    # layer4.0 (read by the padded layer4.1.conv1), folded into fc after layer4.1
    stream = _pick(gen, 512, 0.125)
    for conv in ("layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"):
        plan.kill[conv], plan.removed[conv] = stream, stream
    plan.silence["layer4.0.bn2"] = stream
    return plan


@pytest.mark.parametrize("family", FAMILIES)
def test_resnet18(family):
    models = import_torchvision_models()
    torch.manual_seed(0)
    plain = models.resnet18(num_classes=10)
    plan = _resnet18_plan(plain)
    model = _prepare(plain, family, plan)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    result = _check(model, x, plan)
    assert result.model.fc.in_features == 512 - len(plan.removed["layer4.1.conv2"])
    stream = plan.removed["layer4.1.conv2"]
    kept = sorted(set(range(512)) - set(stream))
    assert result.followers["layer4.0.downsample.1"] == result.followers["layer4.1.bn2"] == kept


# -- mobilenet_v3_small -----------------------------------------------------------------
def _mobilenet_plan(model: nn.Module) -> Plan:
    gen, plan = torch.Generator().manual_seed(2), Plan()
    for block in (1, 4, 5, 6, 7, 8, 9, 10, 11):  # squeeze-excitation: fc1 → ReLU → fc2
        fc1 = f"features.{block}.block.{1 if block == 1 else 2}.fc1"
        units = _pick(gen, _units(model, fc1))
        plan.kill[fc1], plan.removed[fc1] = units, units  # relu(bias) folded into fc2
    for block in (5, 8, 10):
        # an expanded channel couples expand conv, depthwise conv and SE's fc2 (x · s):
        # dead in expand and fc2, silenced before the padded depthwise conv
        expand, fc2 = f"features.{block}.block.0.0", f"features.{block}.block.2.fc2"
        units = _pick(gen, _units(model, expand))
        plan.kill[expand] = plan.kill[fc2] = plan.removed[expand] = plan.removed[fc2] = units
        plan.silence[f"features.{block}.block.0.1"] = units
    # the 40-wide residual stream: three projections, constants folded into the next
    # expand convs' BatchNorms (bias-free 1×1 readers)
    stream = _pick(gen, 40)
    for block in (4, 5, 6):
        conv = f"features.{block}.block.3.0"
        plan.kill[conv], plan.removed[conv] = stream, stream
    for layer in ("features.12.0", "classifier.0"):  # folded into the head's biases
        units = _pick(gen, _units(model, layer))
        plan.kill[layer], plan.removed[layer] = units, units
    unsilenced = _pick(gen, _units(model, "features.2.block.0.0"))
    plan.kill["features.2.block.0.0"] = plan.kept["features.2.block.0.0"] = unsilenced
    return plan


@pytest.mark.parametrize("family", FAMILIES)
def test_mobilenet_v3_small(family):
    models = import_torchvision_models()
    torch.manual_seed(0)
    plain = models.mobilenet_v3_small(num_classes=10)
    plan = _mobilenet_plan(plain)
    model = _prepare(plain, family, plan)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    result = _check(model, x, plan)
    dw = result.model.features[5].block[1][0]
    kept = 240 - len(plan.removed["features.5.block.0.0"])
    assert dw.groups == dw.in_channels == dw.out_channels == kept
    assert result.model.features[5].block[1][1].num_features == kept


# -- vgg11_bn -----------------------------------------------------------------------------
def _narrow_vgg(models) -> nn.Module:
    """vgg11_bn with a 64-wide classifier: torchvision's 4096-wide head has 120M weights."""
    model = models.vgg11_bn(num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 64),
        nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10),
    )  # fmt: skip
    return model


def _vgg_plan(model: nn.Module) -> Plan:
    gen, plan = torch.Generator().manual_seed(3), Plan()
    convs = [n for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)]
    for i, conv in enumerate(convs):
        layer = f"features.{conv}"
        units = _pick(gen, _units(model, layer))
        plan.kill[layer] = units
        if i == 0:
            plan.carried[layer] = units  # non-zero constants read by a padded conv
        elif i < len(convs) - 1:
            plan.silence[f"features.{int(conv) + 1}"] = units
            plan.removed[layer] = units
        else:  # the last: over avgpool(7×7) and flatten into classifier.0's bias
            plan.removed[layer] = units
    for layer in ("classifier.0", "classifier.3"):
        units = _pick(gen, _units(model, layer))
        plan.kill[layer], plan.removed[layer] = units, units
    return plan


@pytest.mark.parametrize("family", SLOW_FAMILIES)
def test_vgg11_bn(family):
    models = import_torchvision_models()
    torch.manual_seed(0)
    plain = _narrow_vgg(models)
    plan = _vgg_plan(plain)
    model = _prepare(plain, family, plan)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    result = _check(model, x, plan)
    last = 512 - len(plan.removed["features.25"])
    assert result.model.classifier[0].in_features == last * 49


# -- densenet121 -------------------------------------------------------------------------
def _densenet_plan(model: nn.Module) -> Plan:
    gen, plan = torch.Generator().manual_seed(4), Plan()
    growth = [f"features.denseblock{b}.denselayer{k}.conv2" for b, k in ((1, 1), (2, 3), (3, 5))]
    for conv in growth:
        # no bias: exactly 0, then every later norm1 makes a constant that the next 1×1
        # convs fold into norm2, the transition conv into the next block's BatchNorms
        units = _pick(gen, 32)
        plan.kill[conv], plan.removed[conv] = units, units
    for b, k in ((1, 2), (4, 3)):
        conv = f"features.denseblock{b}.denselayer{k}.conv1"
        units = _pick(gen, 128)
        plan.kill[conv], plan.removed[conv] = units, units
        plan.silence[f"features.denseblock{b}.denselayer{k}.norm2"] = units
    for conv in ("features.conv0", "features.transition1.conv", "features.transition3.conv"):
        units = _pick(gen, _units(model, conv), 0.125)
        plan.kill[conv], plan.removed[conv] = units, units
    return plan


@pytest.mark.parametrize("family", SLOW_FAMILIES)
def test_densenet121(family):
    models = import_torchvision_models()
    torch.manual_seed(0)
    plain = models.densenet121(num_classes=10)
    plan = _densenet_plan(plain)
    model = _prepare(plain, family, plan)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    result = _check(model, x, plan)
    assert result.model.features.norm0.num_features == 64 - len(plan.removed["features.conv0"])
    # block 1's dead growth channels reach the bias-free transition conv: its offset went
    # through the average pool and block 2's concatenations into their BatchNorms
    assert any("'features.transition1.conv' has no bias" in note for note in result.notes)


# -- grouped convolutions: resnext50_32x4d and regnet_y_400mf ----------------------------
@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_y_400mf"])
def test_grouped_convolutions_are_scored_and_shrunk_by_whole_groups(name):
    """Activation scores read a grouped convolution's columns in their own groups (they
    crashed on these models before), and keep_units → shrink_graph removes whole groups."""
    models = import_torchvision_models()
    torch.manual_seed(0)
    plain = getattr(models, name)(num_classes=10)
    _randomise_batchnorms(plain)
    model = convert(plain.double(), "gaussian").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    scores = compress_scores(model, x)
    grouped = [
        n
        for n, m in model.named_modules()
        if isinstance(m, VariationalLayer) and getattr(m, "groups", 1) > 1
    ]
    assert grouped and all(n in scores for n in grouped)
    result = shrink_graph(model, x, prune_units=keep(scores, sparsity=0.25))
    assert result.max_abs_difference < TOL
    for name_ in grouped:
        before, after = model.get_submodule(name_), result.model.get_submodule(name_)
        per_group = before.out_channels // before.groups
        assert after.out_channels < before.out_channels
        assert after.out_channels // after.groups == per_group  # whole groups went


# -- stochastic depth on residual branches: efficientnet_b0 ------------------------------
def test_stochastic_depth_passes_the_residual_channels():
    """torchvision's stochastic_depth (identity in eval, one number per sample in
    training) used to pin every residual stream of EfficientNet: now the projections
    that write those streams are scored and shrunk with their readers."""
    models = import_torchvision_models()
    torch.manual_seed(0)
    plain = models.efficientnet_b0(num_classes=10)
    _randomise_batchnorms(plain)
    model = convert(plain.double(), "gaussian").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    scores = compress_scores(model, x)
    projection = "features.2.1.block.3.0"  # writes a residual stream (stage 2, block 2)
    assert torch.isfinite(scores[projection]).all()
    torch.testing.assert_close(scores[projection], scores["features.2.0.block.3.0"])
    result = shrink_graph(model, x, prune_units=keep(scores, sparsity=0.25))
    assert result.max_abs_difference < TOL
    small = result.model.get_submodule(projection)
    assert small.out_channels < model.get_submodule(projection).out_channels


# -- torchvision's FrozenBatchNorm2d: every detector built on pretrained weights -------
def test_frozen_batchnorm_follows_its_channels_and_reloads(tmp_path):
    """A resnet18 normalised by FrozenBatchNorm2d (x · scale + shift from fixed buffers)
    had every channel pinned; it is now sliced like a BatchNorm, and a shrunk model saves
    and loads into a fresh one of the same build."""
    models = import_torchvision_models()
    from torchvision.ops.misc import FrozenBatchNorm2d

    from bayesprune.compress import load_shrunk, save_shrunk

    def build() -> nn.Module:
        torch.manual_seed(0)
        return models.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d)

    plain = build()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.6 - 0.1)
    model = convert(plain.double(), "gaussian").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    scores = compress_scores(model, x)
    assert torch.isfinite(scores["layer1.0.conv1"]).all()
    result = shrink_graph(model, x, prune_units=keep(scores, sparsity=0.25))
    assert result.max_abs_difference < TOL
    small = result.model
    assert small.layer1[0].bn1.weight.numel() == small.layer1[0].conv1.out_channels < 64
    path = save_shrunk(small, tmp_path / "frozen.safetensors")
    loaded = load_shrunk(path, lambda: convert(build().double(), "gaussian").double())
    torch.testing.assert_close(_out(loaded, x), _out(small, x))
