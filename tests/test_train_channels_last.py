"""fit's channels-last training: on only where safe, same result, nothing leaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.checkpoint import list_checkpoints
from bayesprune.nn.layout import channels_last_convs, use_channels_last

CL = torch.channels_last


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    return x, (x[:, 0, :4, :4].mean((1, 2)) > 0).long()


def _net(seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    plain = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 2),
    )
    return bp.convert(plain)


def _layouts_seen(net: nn.Module) -> list[bool]:
    """Records whether each max pooling's input was channels-last."""
    seen: list[bool] = []
    net[2].register_forward_hook(
        lambda m, inputs, out: seen.append(inputs[0].is_contiguous(memory_format=CL))
    )
    return seen


def test_auto_trains_channels_last_with_the_same_result():
    x, y = _data()
    auto, plain = _net(), _net()
    seen_auto, seen_plain = _layouts_seen(auto), _layouts_seen(plain)
    kw = dict(epochs=3, batch_size=16, seed=4, lr=1e-2)
    history = bp.fit(auto, (x, y), **kw)
    bp.fit(plain, (x, y), channels_last=False, **kw)
    assert seen_auto and all(seen_auto) and not any(seen_plain)
    for (name, a), b in zip(auto.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]


def test_nothing_leaks_into_the_model_after_fit():
    x, y = _data()
    net = _net()
    bp.fit(net, (x, y), epochs=1, batch_size=16, seed=0)
    assert all(p.is_contiguous() for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())
    net.eval()
    assert net[0](x).is_contiguous()  # the user's later forward passes: default layout


def test_checkpoints_resume_exactly_with_auto(tmp_path):
    x, y = _data()
    straight = _net()
    bp.fit(straight, (x, y), epochs=3, batch_size=16, seed=2, checkpoint_dir=tmp_path / "a")

    def stop(record):
        return record["epoch"] != 2

    bp.fit(_net(), (x, y), epochs=3, batch_size=16, seed=2, checkpoint_dir=tmp_path / "b",
           callbacks=[stop])  # fmt: skip
    assert len(list_checkpoints(tmp_path / "b")) == 2
    resumed = _net(seed=9)
    bp.fit(resumed, (x, y), epochs=3, batch_size=16, seed=2, checkpoint_dir=tmp_path / "b",
           resume=True)  # fmt: skip
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


class _ViewNet(nn.Module):
    """A custom forward that flattens with `.view`, which a channels-last map refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_custom_forward_with_view_trains_under_auto_and_fails_when_forced():
    x, y = _data()
    net = bp.convert(_ViewNet())
    history = bp.fit(net, (x, y), epochs=2, batch_size=16, seed=0)
    assert len(history.epochs) == 2
    with pytest.raises(ValueError, match=r"calls \.view"):
        bp.fit(bp.convert(_ViewNet()), (x, y), epochs=1, batch_size=16, channels_last=True)


class _MyReLU(nn.ReLU):
    pass


@pytest.mark.parametrize(
    ("model", "device", "expected"),
    [
        (bp.lenet5_caffe(), "cpu", True),
        (bp.lenet5_caffe(family="deterministic"), "cpu", True),
        (bp.lenet5_caffe(), "cuda", False),
        (bp.lenet_300_100(), "cpu", False),  # no convolution
        (nn.Sequential(nn.Conv2d(1, 2, 3), _MyReLU()), "cpu", False),  # a subclass may differ
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2)), "cpu", False),
        (_ViewNet(), "cpu", False),
    ],
)
def test_auto_only_where_safe(model, device, expected):
    assert use_channels_last(None, model, device) is expected
    assert use_channels_last(True, model, device) is True


def test_a_bad_value_is_one_clear_error():
    with pytest.raises(ValueError, match="channels_last must be True, False or None"):
        use_channels_last("yes", bp.lenet5_caffe(), "cpu")  # type: ignore[arg-type]


def test_per_activation_noise_families_train_channels_last():
    """Sparse VD draws noise per pre-activation (other numbers channels-last, the same
    distribution): it still learns, and its mean network is layout-independent."""
    x, y = _data(96)
    torch.manual_seed(1)
    plain = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(54, 2)
    )
    net = bp.convert(plain, "sparse_vd")
    seen = _layouts_seen(net)
    history = bp.fit(net, (x, y), epochs=6, batch_size=16, seed=0, lr=1e-2)
    assert seen and all(seen)
    assert history.epochs[-1]["nll"] < history.epochs[0]["nll"]
    mean = bp.to_deterministic(net)
    with channels_last_convs(mean), torch.no_grad():
        channels_last = mean(x)
    torch.testing.assert_close(channels_last, mean(x).detach())
