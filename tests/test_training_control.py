"""fit and predict on DataLoaders, early stopping, restore_best, callbacks that stop."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import bayesprune as bp
from bayesprune.train import StopTraining


def _blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


class _Rows(Dataset):
    """A plain (non-tensor) Dataset, as users write them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_fit_streams_a_dataloader_learns_and_scales_the_kl_by_the_dataset():
    x, y = _blobs()
    loader = DataLoader(_Rows(x, y), batch_size=50, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    model = bp.mlp(4, [16], 3, prior_scale=0.5)
    history = bp.fit(model, loader, DataLoader(_Rows(x, y), batch_size=100), epochs=15,
                     lr=1e-2, lr_schedule="constant", progress=False)  # fmt: skip
    assert history.dataset_size == 400  # len(loader.dataset), not the batch or the batches
    losses = history.column("loss")
    assert losses[-1] < losses[0]
    assert history.last()["val_accuracy"] > 0.85  # chance is < 0.55 here


def test_fit_on_a_loader_uses_n_for_the_kl():
    x, y = _blobs(100)
    model = bp.mlp(4, [8], 3)
    kl = bp.kl(model).item()
    loader = DataLoader(TensorDataset(x, y), batch_size=100)
    record = bp.fit(model, loader, epochs=1, lr=1e-9, progress=False).last()
    assert record["loss"] == pytest.approx(record["nll"] + kl / 100, rel=1e-4)


def test_a_loader_without_a_dataset_size_needs_dataset_size():
    x, y = _blobs(100)

    class Batches:  # re-iterable, no .dataset
        def __iter__(self):
            return iter([(x[:50], y[:50]), (x[50:], y[50:])])

    with pytest.raises(ValueError, match="dataset_size"):
        bp.fit(bp.mlp(4, [8], 3), Batches(), epochs=1, progress=False)
    history = bp.fit(bp.mlp(4, [8], 3), Batches(), epochs=1, dataset_size=100, progress=False)
    assert history.dataset_size == 100
    with pytest.raises(ValueError, match="one-shot"):
        bp.fit(bp.mlp(4, [8], 3), (b for b in Batches()), epochs=1, dataset_size=100)


@pytest.mark.parametrize("mode", ["mean", "mc"])
def test_predict_on_a_dataloader_equals_predict_on_the_tensor(mode):
    x, y = _blobs(130)
    model = bp.mlp(4, [8], 3)
    whole = bp.predict(model, x, mode=mode, samples=3, batch_size=32, seed=1)
    for loader in (DataLoader(TensorDataset(x, y), batch_size=32),
                   DataLoader(TensorDataset(x), batch_size=32)):  # fmt: skip
        streamed = bp.predict(model, loader, mode=mode, samples=3, seed=1)
        torch.testing.assert_close(streamed.probs, whole.probs)
        torch.testing.assert_close(streamed.mutual_information, whole.mutual_information)


def test_early_stopping_stops_on_a_plateau_and_restore_best_restores():
    x, y = _blobs(200)
    model = bp.mlp(4, [8], 3)
    seen = {}

    def keep(record):
        seen[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    # lr tiny: val_nll barely moves, so min_delta makes every epoch after the first a plateau
    options = dict(early_stopping=3, min_delta=1.0, restore_best=True, callbacks=(keep,))
    history = bp.fit(model, (x, y), (x, y), epochs=30, lr=1e-6, progress=False, **options)
    assert history.stopped_epoch == 4 and len(history.epochs) == 4  # 1 best + 3 patience
    assert history.best_epoch == 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, seen[1][k])


def test_restore_best_picks_the_best_monitored_epoch():
    x, y = _blobs(300)
    model = bp.mlp(4, [16], 3, prior_scale=0.5)
    history = bp.fit(model, (x, y), (x, y), epochs=8, lr=5e-2, monitor="val_accuracy",
                     restore_best=True, progress=False)  # fmt: skip
    accuracies = history.column("val_accuracy")
    assert history.best_epoch == 1 + max(range(8), key=lambda i: (accuracies[i], -i))
    assert history.stopped_epoch is None
    restored = bp.evaluate(model, (x, y), metrics=("accuracy",))["accuracy"]
    assert restored == pytest.approx(max(accuracies))


@pytest.mark.parametrize("how", ["false", "raise"])
def test_a_callback_stops_training(how):
    x, y = _blobs(100)

    def stop_at_3(record):
        if record["epoch"] == 3:
            if how == "raise":
                raise StopTraining
            return False
        return None

    history = bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=10, callbacks=(stop_at_3,), progress=False)
    assert len(history.epochs) == 3 and history.stopped_epoch == 3


def test_early_stopping_resumes_exactly(tmp_path):
    x, y = _blobs(200)
    kwargs = dict(epochs=12, lr=1e-6, early_stopping=2, min_delta=1.0, restore_best=True,
                  batch_size=50, progress=False)  # fmt: skip
    whole = bp.mlp(4, [8], 3)
    torch.manual_seed(0)
    reference = bp.fit(whole, (x, y), (x, y), checkpoint_dir=tmp_path / "a", **kwargs)
    torch.manual_seed(0)
    part = bp.mlp(4, [8], 3)
    bp.fit(part, (x, y), (x, y), checkpoint_dir=tmp_path / "b", **{**kwargs, "epochs": 2})
    resumed = bp.fit(part, (x, y), (x, y), checkpoint_dir=tmp_path / "b", resume=True, **kwargs)
    assert resumed.stopped_epoch == reference.stopped_epoch == 3
    assert resumed.best_epoch == reference.best_epoch == 1


def test_monitor_needs_validation_and_a_known_direction():
    x, y = _blobs(50)
    with pytest.raises(ValueError, match="needs validation data"):
        bp.fit(bp.mlp(4, [8], 3), (x, y), epochs=1, early_stopping=2, monitor="val_nll")
    with pytest.raises(ValueError, match="which way"):
        bp.fit(bp.mlp(4, [8], 3), (x, y), (x, y), epochs=1, early_stopping=2, monitor="val_x")
