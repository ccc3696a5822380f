"""A text classifier called by name (token ids, a padding mask; Hugging Face's style, its
output a dict of logits): fit, predict and evaluate take its inputs as a tokenizer
gives them, and the same batch scores and shrinks it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import bayesprune as bp
from bayesprune import compress

VOCAB, LENGTH = 30, 8


class TextClassifier(nn.Module):
    """Mean of the token embeddings under the mask, an MLP; the logits in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden, self.out = nn.Linear(16, 32), nn.Linear(32, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return {"logits": self.out(torch.relu(self.hidden(pooled)))}


def _texts(n: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """Label 1 when token 3 appears among the unpadded tokens; the padding holds token 3
    too, so a model that ignored the mask could not learn it."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, LENGTH), generator=gen)
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=gen)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    labels = torch.randint(0, 2, (n,), generator=gen)
    where = (torch.rand(n, generator=gen) * lengths).long()
    ids[labels == 1, where[labels == 1]] = 3
    ids[mask == 0] = 3
    return {"input_ids": ids, "attention_mask": mask}, labels


class Rows(Dataset):
    """Examples as a Hugging Face dataset gives them to a collator: one dict each."""

    def __init__(self, x: dict[str, Tensor], y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**{k: v[i] for k, v in self.x.items()}, "labels": self.y[i]}


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = bp.convert(TextClassifier(), "gaussian")
    x, y = _texts(600, seed=0)
    loader = DataLoader(Rows(x, y), batch_size=64, shuffle=True)
    bp.fit(model, loader, epochs=12, lr=1e-2)
    return model


def test_fit_on_batches_by_name_learns_and_predict_takes_the_dict(trained):
    x, y = _texts(300, seed=1)
    probs = bp.predict(trained, x, samples=8).probs
    assert probs.shape == (300, 2)
    assert (probs.argmax(1) == y).float().mean() > 0.85  # chance is 0.5
    loader = DataLoader(Rows(x, y), batch_size=50)
    from_loader = bp.predict(trained, loader, samples=8, seed=3).probs
    assert torch.allclose(
        from_loader, bp.predict(trained, x, samples=8, seed=3, batch_size=50).probs
    )


def test_fit_on_an_xy_pair_by_name_and_evaluate(trained):
    torch.manual_seed(1)
    model = bp.convert(TextClassifier(), "gaussian")
    x, y = _texts(600, seed=0)
    history = bp.fit(model, (x, y), val=_texts(200, seed=2), epochs=12, lr=1e-2, batch_size=64)
    assert history.last()["val_accuracy"] > 0.85
    scores = bp.evaluate(model, _texts(200, seed=3), samples=4)
    assert scores["accuracy"] > 0.85 and scores["nll"] < 0.5


def test_the_same_batch_scores_and_shrinks_the_trained_model(trained):
    x, _ = _texts(64, seed=4)
    keep = compress.keep_units(compress.activation_scores(trained, x), sparsity=0.5)
    small = compress.shrink_graph(trained, x, prune_units={"hidden": keep["hidden"]})
    assert small.model.hidden.out_features == 16 and small.max_abs_difference < 1e-5
    test_x, test_y = _texts(300, seed=5)
    accuracy = bp.predict(small.model, test_x, samples=8).probs.argmax(1) == test_y
    assert accuracy.float().mean() > 0.8


def test_bad_batches_by_name_are_one_clear_error():
    model = bp.convert(TextClassifier(), "gaussian")
    x, y = _texts(20, seed=0)
    unlabelled = DataLoader([{k: v[i] for k, v in x.items()} for i in range(20)], batch_size=5)
    with pytest.raises(ValueError, match="targets under 'labels'"):
        bp.fit(model, unlabelled, epochs=1)
    with pytest.raises(ValueError, match="does not take the inputs by name"):
        bp.predict(model, {**x, "token_type_ids": x["input_ids"]}, samples=1)
    with pytest.raises(ValueError, match="one row per example"):
        bp.predict(model, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:5]})
    with pytest.raises(ValueError, match=r"X\['text'\].*drop that entry"):
        bp.fit(model, ({**x, "text": ["a"] * 20}, y), epochs=1)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integers_into_a_float_layer_still_say_what_to_do(dtype):
    mlp = bp.mlp(3, [4], 2)
    with pytest.raises(ValueError, match=f"dtype {dtype}.*real floating-point.*x.float"):
        bp.predict(mlp, torch.ones(4, 3, dtype=dtype), samples=1)


def test_the_shrunk_model_exports_to_onnx_by_name_with_free_lengths(trained, tmp_path):
    x, _ = _texts(16, seed=6)
    keep = compress.keep_units(compress.activation_scores(trained, x), sparsity=0.5)
    small = compress.shrink_graph(trained, x, prune_units={"hidden": keep["hidden"]}).model
    free = {0: "batch", 1: "tokens"}
    path = compress.export_onnx(
        small, tmp_path / "text.onnx", example_inputs=x,
        dynamic_axes={"input_ids": free, "attention_mask": free},
    )  # fmt: skip
    other, _ = _texts(5, seed=7)
    shorter = {k: v[:, :5] for k, v in other.items()}  # another batch and length
    shorter["attention_mask"][:, 0] = 1  # every row keeps a token
    assert compress.onnx_difference(path, small, shorter) < 1e-5
    with pytest.raises(ValueError, match="input_shape or example_inputs"):
        compress.export_onnx(small, tmp_path / "none.onnx")


def _padded_apart(batch: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """A collator that pads each batch to its own longest sequence (Hugging Face's
    `DataCollatorWithPadding`): batches of different lengths."""
    longest = max(int(row["attention_mask"].sum()) for row in batch)
    return {
        "input_ids": torch.stack([row["input_ids"][:longest] for row in batch]),
        "attention_mask": torch.stack([row["attention_mask"][:longest] for row in batch]),
        "labels": torch.stack([row["labels"] for row in batch]),
    }


def test_batches_padded_to_their_own_length_validate_and_evaluate(trained):
    x, y = _texts(200, seed=8)
    order = x["attention_mask"].sum(1).argsort()  # short rows first: lengths differ by batch
    x, y = {k: v[order] for k, v in x.items()}, y[order]
    loader = DataLoader(Rows(x, y), batch_size=40, collate_fn=_padded_apart)
    assert len({b["input_ids"].shape[1] for b in loader}) > 1
    scores = bp.evaluate(trained, loader, mode="mean")
    joined = bp.evaluate(trained, (x, y), mode="mean")
    assert scores["accuracy"] == pytest.approx(joined["accuracy"]) and scores["accuracy"] > 0.85
    model = bp.convert(TextClassifier(), "gaussian")
    history = bp.fit(model, DataLoader(Rows(*_texts(300, seed=9)), batch_size=50), val=loader)
    assert "val_accuracy" in history.last()


def test_scores_read_a_loader_of_labelled_dicts_without_the_labels(trained):
    x, y = _texts(100, seed=10)
    from_loader = compress.activation_scores(trained, DataLoader(Rows(x, y), batch_size=25))
    from_inputs = compress.activation_scores(
        trained, [{k: v[i : i + 25] for k, v in x.items()} for i in range(0, 100, 25)]
    )
    assert from_loader.keys() == from_inputs.keys()
    for name in from_loader:
        assert torch.allclose(from_loader[name], from_inputs[name])


def test_self_compress_takes_a_model_called_by_name(trained):
    x, y = _texts(200, seed=11)
    evaluate = bp.evaluation.scorer((x, y), metrics=["accuracy"])
    result = compress.self_compress(
        trained, evaluate, example_inputs={k: v[:16] for k, v in x.items()},
        score="activation", score_data=x, fraction=0.25, tolerance=0.05, max_rounds=2,
    )  # fmt: skip
    assert result.model.hidden.out_features < 32
    assert evaluate(result.model)["accuracy"] > 0.8


def _sorted_loader(n: int, seed: int, batch_size: int = 40) -> tuple[DataLoader, tuple]:
    """Rows sorted by length and batched by `_padded_apart`: each batch its own length."""
    x, y = _texts(n, seed=seed)
    order = x["attention_mask"].sum(1).argsort()
    x, y = {k: v[order] for k, v in x.items()}, y[order]
    return DataLoader(Rows(x, y), batch_size=batch_size, collate_fn=_padded_apart), (x, y)


def test_stored_batches_give_rows_as_the_joined_inputs_do():
    loader, (x, y) = _sorted_loader(100, seed=12, batch_size=30)
    stored, targets = bp.data.as_xy(loader, "data", ragged=True)
    assert isinstance(stored, bp.inputs.StoredBatches) and torch.equal(targets, y)
    assert bp.inputs.rows(stored) == 100
    for index in (slice(25, 70), torch.randperm(100, generator=torch.Generator().manual_seed(0))):
        taken = bp.inputs.take(stored, index)
        expected, at = {k: v[index] for k, v in x.items()}, 0
        for piece in taken:  # the rows in the index's order, each piece at its own padding
            n, width = piece["input_ids"].shape
            for name in ("input_ids", "attention_mask"):
                assert torch.equal(piece[name], expected[name][at : at + n, :width])
            assert expected["attention_mask"][at : at + n, width:].sum() == 0
            at += n
        assert at == bp.inputs.rows(taken) == len(y[index])


def test_temperature_and_the_restoring_choice_read_batches_padded_apart(trained):
    """Padding is masked, so the loader's batches and the same rows joined must give the
    same temperature and the same candidates' metrics (posterior mean: no draws)."""
    loader, joined = _sorted_loader(200, seed=13)
    assert len({b["input_ids"].shape[1] for b in loader}) > 1
    fit_t = bp.calibration.fit_temperature
    assert fit_t(trained, loader, mode="mean") == pytest.approx(
        fit_t(trained, joined, mode="mean"), rel=1e-4
    )
    train = DataLoader(Rows(*_texts(200, seed=14)), batch_size=50)
    options = {"mode": "mean", "train": train, "methods": "auto", "epochs": 1, "lr": 1e-3}
    choice = bp.choose_restoration(trained, loader, **options)
    reference = bp.choose_restoration(trained, joined, **options)
    assert choice.rows == reference.rows == {"fit": 100, "choose": 100}
    assert {"temperature", "finetune"} <= set(choice.candidates)
    for method, candidate in reference.candidates.items():
        for metric, value in candidate["validation"].items():
            assert choice.candidates[method]["validation"][metric] == pytest.approx(
                value, rel=1e-3, abs=1e-5
            ), (method, metric)
    assert choice.method == reference.method
