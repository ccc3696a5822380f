"""fit(): real learning, the KL convention, checkpoints, resume and bad input."""

import subprocess
import sys
import textwrap
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.checkpoint import list_checkpoints
from bayesprune.io import CheckpointError
from bayesprune.optim import resolve_schedule


def _blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_classifier_learns_and_kl_is_nonnegative():
    x, y = _blobs()
    model = bp.mlp(4, [16], 3, prior_scale=0.5)
    history = bp.fit(model, (x, y), (x, y), epochs=20, batch_size=50, lr=1e-2, progress=False)
    losses = history.column("loss")
    assert losses[-1] < losses[0]
    assert all(k >= 0 for k in history.column("kl"))
    assert history.last()["val_accuracy"] > 0.85  # chance is < 0.55 here
    assert history.likelihood.task == "classification"


def test_regressor_learns_the_noise_level():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(600, generator=g)
    model = bp.mlp(1, [32, 32], 1, prior_scale=1.0)
    lik = bp.Gaussian()
    history = bp.fit(model, (x, y), (x, y), likelihood=lik, epochs=60, batch_size=100, lr=1e-2)
    assert history.last()["val_rmse"] < 0.35  # the std of y is about 0.7
    assert history.column("nll")[-1] < history.column("nll")[0]
    learned = torch.nn.functional.softplus(lik.noise_rho).item()
    assert learned < 0.6  # started at 1.0, moves toward the true 0.1


def test_kl_is_divided_by_the_data_set_size():
    x, y = _blobs(100)
    model = bp.mlp(4, [8], 3)
    kl_before = bp.kl(model).item()
    history = bp.fit(model, (x, y), epochs=1, batch_size=100, lr=1e-9, progress=False)
    record = history.last()
    assert record["loss"] == pytest.approx(record["nll"] + kl_before / 100, rel=1e-4)
    other = bp.mlp(4, [8], 3)
    kl_other = bp.kl(other).item()
    h2 = bp.fit(other, (x, y), epochs=1, batch_size=100, lr=1e-9, dataset_size=1000)
    assert h2.last()["loss"] - h2.last()["nll"] == pytest.approx(kl_other / 1000, rel=1e-3)


def test_kl_warmup_starts_small():
    x, y = _blobs(200)
    history = bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=2, batch_size=20, kl_warmup_epochs=4)
    assert history.epochs[0]["kl_weight"] == pytest.approx(10 / 40)
    assert history.epochs[1]["kl_weight"] == pytest.approx(20 / 40)


def test_fit_leaves_the_callers_rng_alone():
    x, y = _blobs(100)
    model = bp.mlp(4, [8], 3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bp.fit(model, (x, y), epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_same_result():
    x, y = _blobs(200)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = bp.mlp(4, [8], 3)
        bp.fit(model, (x, y), epochs=2, batch_size=32, seed=5)
        runs.append(_params(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    x, y = _blobs(200)
    torch.manual_seed(3)
    straight = bp.mlp(4, [8], 3)
    init = _params(straight)
    bp.fit(straight, (x, y), epochs=4, batch_size=32, seed=11, checkpoint_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Stop

    interrupted = bp.mlp(4, [8], 3)
    interrupted.load_state_dict(init)
    with pytest.raises(Stop):
        bp.fit(
            interrupted,
            (x, y),
            epochs=4,
            batch_size=32,
            seed=11,
            checkpoint_dir=tmp_path / "b",
            callbacks=[stop_after_two],
        )
    resumed = bp.mlp(4, [8], 3)  # fresh weights: all state must come from the checkpoint
    history = bp.fit(
        resumed,
        (x, y),
        epochs=4,
        batch_size=32,
        seed=11,
        checkpoint_dir=tmp_path / "b",
        resume=True,
    )
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == [
        "epoch-0003.safetensors",
        "epoch-0004.safetensors",
    ]


def test_resume_after_a_real_kill(tmp_path):
    """SIGKILL the training process after epoch 2; resuming must match a straight run."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch, bayesprune as bp
        g = torch.Generator().manual_seed(0)
        x = torch.randn(200, 4, generator=g); y = (x[:, 0] > 0).long()
        torch.manual_seed(3)
        model = bp.mlp(4, [8], 2)
        def die(record):
            if record["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        bp.fit(model, (x, y), epochs=4, batch_size=32, seed=1,
               checkpoint_dir={str(tmp_path / "run")!r}, callbacks=[die])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(3)
    straight = bp.mlp(4, [8], 2)
    bp.fit(straight, (x, y), epochs=4, batch_size=32, seed=1)
    resumed = bp.mlp(4, [8], 2)
    bp.fit(
        resumed,
        (x, y),
        epochs=4,
        batch_size=32,
        seed=1,
        checkpoint_dir=tmp_path / "run",
        resume=True,
    )
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_is_one_clear_error_and_nothing_is_lost(tmp_path, damage):
    x, y = _blobs(100)
    bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=2, checkpoint_dir=tmp_path, keep_checkpoints=3)
    newest = list_checkpoints(tmp_path)[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert "epoch-0001.safetensors" in str(info.value)  # names the fallback
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_with_another_architecture_is_a_clear_error(tmp_path):
    x, y = _blobs(100)
    bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        bp.fit(bp.mlp(4, [9], 3), (x, y), epochs=2, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_inputs_are_rejected(bad):
    x, y = _blobs(50)
    x[7, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or inf in 1 rows \(first: \[7\]\)"):
        bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=1)


def test_bad_shapes_and_labels_are_clear_errors():
    x, y = _blobs(50)
    model = bp.mlp(4, [8], 3)
    with pytest.raises(ValueError, match="do not fit the model"):
        bp.fit(model, (torch.randn(50, 5), y), epochs=1)
    with pytest.raises(ValueError, match="50 rows but y has 49"):
        bp.fit(model, (x, y[:-1]), epochs=1)
    y_bad = y.clone()
    y_bad[-1] = 3  # in the last batch: the check covers all labels up front
    with pytest.raises(ValueError, match=r"labels out of range: found 0\.\.3"):
        bp.fit(model, (x, y_bad), epochs=1, batch_size=10)
    with pytest.raises(ValueError, match="must be integers"):
        bp.fit(model, (x, y.float()), epochs=1)
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'; valid"):
        bp.fit(model, (x, y), epochs=1, optimizer="adamax")
    with pytest.raises(ValueError, match="unknown likelihood"):
        bp.fit(model, (x, y), epochs=1, likelihood="poisson")
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        bp.fit(model, (x, y), epochs=1, resume=True)


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image, self.table = torch.nn.Linear(2, 8), torch.nn.Linear(2, 8)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, image: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([self.image(image), self.table(table)], 1)
        return self.head(torch.relu(hidden))


def _two_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The blobs' four features split over two inputs."""
    x, y = _blobs(n)
    return x[:, :2], x[:, 2:], y


class _Nested(torch.utils.data.Dataset):
    def __init__(self, image, table, y) -> None:
        self.image, self.table, self.y = image, table, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return (self.image[i], self.table[i]), self.y[i]


def test_a_model_with_two_inputs_trains_predicts_and_evaluates():
    torch.manual_seed(0)
    image, table, y = _two_inputs(400)
    model = bp.convert(_TwoInputs(), "gaussian")
    train, val = ((image[:300], table[:300]), y[:300]), ((image[300:], table[300:]), y[300:])
    history = bp.fit(model, train, val, epochs=12, batch_size=32, lr=1e-2)
    assert history.epochs[-1]["val_accuracy"] > 0.8  # the majority class is about half
    pred = bp.predict(model, (image[300:], table[300:]), samples=4, seed=0)
    assert pred.probs.shape == (100, 3)
    scores = bp.evaluate(model, val, ood=(image[300:] * 9, table[300:] * 9), mode="mc")
    assert scores["accuracy"] > 0.8 and 0 <= scores["ood_auroc_entropy"] <= 1
    for batches in (  # flat (a, b, y) and nested ((a, b), y) batches train the same way
        torch.utils.data.TensorDataset(image[:300], table[:300], y[:300]),
        _Nested(image[:300], table[:300], y[:300]),
    ):
        other = bp.convert(_TwoInputs(), "gaussian")
        loader = torch.utils.data.DataLoader(batches, batch_size=32, shuffle=True)
        bp.fit(other, loader, epochs=12, lr=1e-2)
        assert (
            bp.evaluate(other, torch.utils.data.DataLoader(batches, batch_size=64))["accuracy"]
            > 0.8
        )
    flat = torch.utils.data.TensorDataset(image[:300], table[:300], y[:300])
    direct = bp.convert(_TwoInputs(), "gaussian")  # a flat TensorDataset, no DataLoader
    bp.fit(direct, flat, epochs=12, batch_size=32, lr=1e-2)
    assert bp.evaluate(direct, flat)["accuracy"] > 0.8
    with pytest.raises(ValueError, match=r"TensorDataset of \(X_1, X_2, y\) is needed"):
        bp.fit(direct, torch.utils.data.TensorDataset(image, y), epochs=1)
    with pytest.raises(ValueError, match="takes 2 tensors.*tuple of 2 inputs"):
        bp.predict(model, image[300:])
    with pytest.raises(ValueError, match="must hold 2 inputs"):
        bp.fit(model, (image, y), epochs=1)


def test_numpy_and_dataset_inputs_work(tmp_path: Path):
    x, y = _blobs(120)
    ds = torch.utils.data.TensorDataset(x, y)
    h1 = bp.fit(bp.mlp(4, [8], 3), (x.numpy(), y.numpy()), epochs=1)

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    h2 = bp.fit(bp.mlp(4, [8], 3), Plain(), epochs=1, batch_size=40)
    assert h1.last()["loss"] > 0 and h2.last()["loss"] > 0


def test_cosine_schedule_decays_and_bad_schedule_is_rejected():
    x, y = _blobs(100)
    history = bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=4, lr=0.01, lr_schedule="cosine")
    lrs = history.column("lr")
    assert lrs[0] == pytest.approx(0.01) and all(a > b for a, b in pairwise(lrs))
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'; valid"):
        bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=1, lr_schedule="step")


def test_the_default_schedule_is_what_the_layers_declare():
    """Cosine for Gaussian (and plain) networks; constant as soon as a spike-and-slab
    layer is in the model, whose gates need a sustained rate to close."""
    x, y = _blobs(100)
    for model, expected in (
        (bp.mlp(4, [8], 3), "cosine"),
        (bp.mlp(4, [8], 3, family="deterministic"), "cosine"),
        (bp.mlp(4, [8], 3, family="spike_slab"), "constant"),
    ):
        lrs = bp.fit(model, (x, y), epochs=3, lr=0.01, progress=False).column("lr")
        if expected == "cosine":
            assert lrs[0] == pytest.approx(0.01) and lrs[0] > lrs[1] > lrs[2]
        else:
            assert lrs == pytest.approx([0.01] * 3)
    mixed = nn.Sequential(bp.mlp(4, [8], 8)[:-1], bp.mlp(8, [], 3, family="spike_slab"))
    assert resolve_schedule("auto", mixed) == "constant"
    assert resolve_schedule("cosine", mixed) == "cosine"  # an explicit choice stands
