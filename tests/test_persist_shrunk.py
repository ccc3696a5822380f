"""save_shrunk / load_shrunk: a shrunk model of the user's own class, back from a
safetensors file with its pruned shapes (no pickle); ONNX of such graphs in onnxruntime."""

from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from torch import Tensor, nn

from bayesprune import convert, to_deterministic
from bayesprune.compress import (
    apply_masks,
    apply_shapes,
    as_prunable,
    export_onnx,
    load_shrunk,
    onnx_difference,
    pruned_shapes,
    save_model,
    save_shrunk,
    shrink_graph,
    unit_weight_masks,
)
from bayesprune.io import CheckpointError, load_tensors, save_tensors
from bayesprune.nn import use_posterior_mean

FAMILIES = ["gaussian", "sparse_vd", "sparse_vd_group", "spike_slab"]


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


class Net(nn.Module):
    """stem conv-BN, a residual block (1×1 convs + BN), depthwise 3×3 + BN, pool, head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 8, 3, padding=1, bias=False), _bn(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 1, bias=False), _bn(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 1, bias=False), _bn(8)
        self.dw, self.dw_bn = nn.Conv2d(8, 8, 3, groups=8), _bn(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        x = F.relu(self.dw_bn(self.dw(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Other(Net):
    """Same modules, another class: a file of Net must not load into it silently."""


def _out(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad(), use_posterior_mean(model):
        return model(x)


def _kill(model: nn.Module, layer: str, units: list[int]) -> None:
    n = as_prunable(model.get_submodule(layer)).posterior().weight_mean.shape[0]
    keep = torch.ones(n)
    keep[units] = 0.0
    apply_masks(model, unit_weight_masks(model, {layer: keep}))


def _shrunk_net(family: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = convert(Net(), family).eval()
    with torch.no_grad():  # β ≪ 0: dead channels emit exactly 0 after the ReLU
        model.bn1.bias[[1, 4]] = -50.0
        model.bn0.bias[[2, 5]] = model.bn2.bias[[2, 5]] = -50.0
    _kill(model, "conv1", [1, 4])
    _kill(model, "stem", [2, 5])
    _kill(model, "conv2", [2, 5])
    x = torch.randn(3, 2, 6, 6)
    result = shrink_graph(model, x)
    small = result.model
    assert small.conv1.out_channels == 4 and small.stem.out_channels == 6
    assert small.dw.groups == small.dw_bn.num_features == 6
    return small, x


def _no_pickle(path) -> None:
    """The file is a safetensors header (JSON) plus raw tensor bytes, and nothing else."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert set(meta) == {"json"} and isinstance(json.loads(meta["json"]), dict)
    end = max(t["data_offsets"][1] for t in header.values())
    assert len(raw) == 8 + n + end  # every byte after the header belongs to a tensor
    assert all(set(t) == {"dtype", "shape", "data_offsets"} for t in header.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_of_a_shrunk_user_class(tmp_path, family):
    small, x = _shrunk_net(family)
    path = save_shrunk(small, tmp_path / "net.safetensors", metadata={"note": "hi"})
    _no_pickle(path)
    for fresh in (Net(), convert(Net(), family), Net):  # plain, converted, or a factory
        loaded = load_shrunk(path, fresh)
        assert type(loaded) is Net and not loaded.training
        assert type(loaded.conv1) is type(small.conv1) and loaded.conv1.out_channels == 4
        assert loaded.dw.groups == 6 and loaded.bn1.num_features == 4
        torch.testing.assert_close(_out(loaded, x), _out(small, x), rtol=0, atol=0)
    assert load_tensors(path)[1]["metadata"] == {"note": "hi"}


def test_shapes_without_a_file_and_a_plain_shrunk_model(tmp_path):
    small, x = _shrunk_net("gaussian")
    shapes = json.loads(json.dumps(pruned_shapes(small)))  # JSON all the way
    assert shapes["conv1"]["type"] == "BayesConv2d"
    assert shapes["bn1"] == {
        "type": "BatchNorm2d",
        "config": {
            "num_features": 4,
            "eps": 1e-5,
            "momentum": 0.1,
            "affine": True,
            "track_running_stats": True,
        },
    }
    fresh = apply_shapes(Net(), shapes)
    fresh.load_state_dict(small.state_dict())
    torch.testing.assert_close(_out(fresh, x), _out(small, x))
    plain = to_deterministic(small)
    loaded = load_shrunk(save_shrunk(plain, tmp_path / "p.safetensors"), convert(Net(), "gaussian"))
    assert type(loaded.conv1) is nn.Conv2d  # the file decides: a plain layer replaces Bayes
    torch.testing.assert_close(_out(loaded, x), _out(plain, x))


def test_files_that_do_not_fit_the_class_fail_clearly(tmp_path):
    small, _ = _shrunk_net("gaussian")
    path = save_shrunk(small, tmp_path / "net.safetensors")
    with pytest.raises(CheckpointError, match=r"holds a .*Net, but model is a .*Other"):
        load_shrunk(path, Other())
    tensors, record = load_tensors(path)

    def tampered(**modules) -> str:
        out = tmp_path / "bad.safetensors"
        save_tensors(out, tensors, {**record, "modules": {**record["modules"], **modules}})
        return str(out)

    conv = record["modules"]["conv1"]
    with pytest.raises(CheckpointError, match=r"'head' is a BayesConv2d \(Conv2d\) in the file"):
        load_shrunk(tampered(head=conv), Net())
    with pytest.raises(CheckpointError, match=r"\['extra'\] are recorded but Net has none"):
        load_shrunk(tampered(extra=conv), Net())
    wide = {**conv, "config": {**conv["config"], "out_channels": 5}}
    with pytest.raises(CheckpointError, match=r"conv1.weight_mu has shape \(4, 6, 1, 1\) in"):
        load_shrunk(tampered(conv1=wide), Net())
    huge = {**conv, "config": {**conv["config"], "out_channels": 10**9}}
    with pytest.raises(CheckpointError, match="in its recorded spec"):  # checked on meta
        load_shrunk(tampered(conv1=huge), Net())
    with pytest.raises(CheckpointError, match="not a layer spec"):
        load_shrunk(tampered(conv1=[1, 2]), Net())
    bare = {k: v for k, v in record["modules"].items() if k != "head"}
    save_tensors(tmp_path / "bare.safetensors", tensors, {**record, "modules": bare})
    with pytest.raises(CheckpointError, match=r"\['head'\] that the file does not record"):
        load_shrunk(tmp_path / "bare.safetensors", Net())
    seq = save_model(nn.Sequential(nn.Linear(2, 2)), tmp_path / "seq.safetensors")
    with pytest.raises(CheckpointError, match="not a file of save_shrunk.*load_model"):
        load_shrunk(seq, Net())
    with pytest.raises(TypeError, match="factory"):
        load_shrunk(path, "Net")


def test_onnx_of_a_shrunk_residual_graph(tmp_path):
    small, x = _shrunk_net("gaussian")
    path = export_onnx(small, tmp_path / "net.onnx", input_shape=(2, 6, 6))
    assert onnx_difference(path, small, torch.randn(5, 2, 6, 6)) < 1e-5
    loaded = load_shrunk(save_shrunk(small, tmp_path / "n.safetensors"), Net())
    assert onnx_difference(path, loaded, x) < 1e-5


def _narrow_first_block(model: nn.Module, keep: Tensor) -> None:
    """What shrinking does inside layer1.0: conv1's outputs, bn1, conv2's inputs cut."""
    block = model.layer1[0]
    block.conv1 = as_prunable(block.conv1).select(out_idx=keep)
    block.conv2 = as_prunable(block.conv2).select(in_idx=keep)
    bn = nn.BatchNorm2d(len(keep))
    bn.load_state_dict(
        {k: v[keep] if v.ndim else v for k, v in block.bn1.state_dict().items()}, strict=True
    )
    block.bn1 = bn


@pytest.mark.parametrize(
    "family",
    ["gaussian", *(pytest.param(f, marks=pytest.mark.slow) for f in ("sparse_vd", "spike_slab"))],
)
def test_torchvision_resnet18_round_trip_and_onnx(tmp_path, family):
    models = import_torchvision_models()
    torch.manual_seed(0)
    model = convert(models.resnet18(num_classes=10), family).eval()
    _narrow_first_block(model, torch.arange(0, 64, 2))
    x = torch.randn(2, 3, 32, 32)
    small = shrink_graph(model, x, prune_units={"layer4.1.conv1": torch.arange(256)}).model
    assert small.layer1[0].conv1.out_channels == 32
    path = save_shrunk(small, tmp_path / "r18.safetensors")
    _no_pickle(path)
    loaded = load_shrunk(path, lambda: models.resnet18(num_classes=10))
    assert loaded.layer1[0].bn1.num_features == 32
    torch.testing.assert_close(_out(loaded, x), _out(small, x), rtol=0, atol=0)
    if family == "gaussian":  # the exporter does not depend on the family: once is enough
        onnx_path = export_onnx(loaded, tmp_path / "r18.onnx", input_shape=(3, 32, 32))
        assert onnx_difference(onnx_path, small, x) < 1e-5


class TwoInputs(nn.Module):
    """An image branch and a tabular branch, concatenated before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 5, 3), _bn(5)
        self.tab = nn.Linear(4, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, image: Tensor, row: Tensor) -> Tensor:
        a = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(image))), 1).flatten(1)
        return self.head(torch.cat([a, torch.tanh(self.tab(row))], dim=1))


def test_a_two_input_graph_shrinks_saves_and_exports(tmp_path):
    torch.manual_seed(0)
    model = convert(TwoInputs(), "gaussian").eval()
    _kill(model, "conv", [1, 3])
    _kill(model, "tab", [0])
    inputs = (torch.randn(4, 2, 6, 6), torch.randn(4, 4))
    small = shrink_graph(model, inputs).model
    assert small.conv.out_channels == 3 and small.tab.out_features == 2
    loaded = load_shrunk(save_shrunk(small, tmp_path / "two.safetensors"), TwoInputs())
    assert loaded.head.in_features == 5
    path = export_onnx(loaded, tmp_path / "two.onnx", input_shape=[(2, 6, 6), (4,)])
    assert onnx_difference(path, small, inputs) < 1e-5
    with pytest.raises(ValueError, match="takes 2 input"):
        onnx_difference(path, small, inputs[0])
    with pytest.raises(ValueError, match="one per input"):
        export_onnx(loaded, tmp_path / "bad.onnx", input_shape=[(2, 6, 6), 4])


def test_an_op_the_exporter_cannot_export_is_one_clear_error(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(18, 2)
    )
    with pytest.raises(ValueError, match=r"cannot export Sequential .*adaptive_avg_pool2d"):
        export_onnx(model, tmp_path / "x.onnx", input_shape=(1, 4, 4))
    assert not (tmp_path / "x.onnx").exists()
