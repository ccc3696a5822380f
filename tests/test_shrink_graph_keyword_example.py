"""Example inputs given by name (a tokenizer's output, T5's `decoder_input_ids`): convert,
score, shrink, count and save a model called as `model(**example)`."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.adapters import mask_rows
from bayesprune.compress.graph import shrink_graph
from bayesprune.metrics import example_flops


class Encoder(nn.Module):
    """Token ids, an optional padding mask, a second sequence only by keyword, a setting."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        decoder_ids: Tensor | None = None,
        scale: float = 1.0,
    ) -> Tensor:
        if input_ids.dim() != 2:  # a check on the shape: only a valued trace follows it
            raise ValueError("input_ids must be batch x tokens")
        h = self.embed(input_ids)
        if decoder_ids is not None:
            h = h + self.embed(decoder_ids).mean(1, keepdim=True)
        h = h + self.down(torch.relu(self.up(h)))
        if attention_mask is not None:
            pooled = (h * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
        else:
            pooled = h.mean(1)
        return self.head(pooled) * scale


def _example(rows: int = 4, seed: int = 0) -> dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, 9)
    mask[:, 6:] = 0  # padding: the mask changes the answer
    return {
        "input_ids": torch.randint(0, 50, (rows, 9), generator=gen),
        "attention_mask": mask,
        "decoder_ids": torch.randint(0, 50, (rows, 3), generator=gen),
        "scale": 2.0,
    }


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(Encoder(), "gaussian", example_inputs=_example()).eval()


def _mean_output(model: nn.Module, example: dict[str, object]) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(**example)


def test_a_keyword_example_is_scored_shrunk_and_kept_the_users_class(model):
    example = _example()
    scores = activation_scores(model, [example, _example(seed=1)])
    assert torch.isfinite(scores["up"]).all()
    keep = {"up": keep_units(scores, sparsity=0.5)["up"]}  # the MLP's units, not the stream
    result = shrink_graph(model, example, prune_units=keep)
    assert type(result.model) is Encoder  # not the class that took the keywords by position
    assert result.model.up.out_features == 16 and result.max_abs_difference < 1e-5
    masked = copy.deepcopy(model)
    mask_rows(masked, "up", (~keep["up"]).nonzero().flatten().tolist())
    other = _example(rows=2, seed=3)  # new rows, the mask, the keyword-only input, the setting
    got = _mean_output(result.model, other)
    assert torch.allclose(got, _mean_output(masked, other), atol=1e-5)
    assert not torch.allclose(got, _mean_output(model, other), atol=1e-3)  # units went
    assert torch.allclose(got, 2 * _mean_output(result.model, {**other, "scale": 1.0}))


def test_the_keywords_change_what_is_shrunk_against(model):
    """The example's mask and second sequence reach the trace: scores differ without them."""
    example = _example()
    with_all = activation_scores(model, example)
    plain = activation_scores(model, example["input_ids"])
    assert not torch.allclose(with_all["up"], plain["up"])


def test_batches_by_name_match_batches_by_position():
    """A DataLoader of dicts scores as the same tensors given by position."""

    class Positional(Encoder):
        def forward(self, input_ids: Tensor, attention_mask: Tensor, decoder_ids: Tensor) -> Tensor:
            return super().forward(input_ids, attention_mask, decoder_ids=decoder_ids, scale=2.0)

    torch.manual_seed(0)
    by_name = bp.convert(Encoder(), "gaussian").eval()
    by_position = bp.convert(Positional(), "gaussian").eval()
    by_position.load_state_dict(by_name.state_dict())
    batches = [_example(seed=s) for s in range(3)]
    named = activation_scores(by_name, batches)
    keys = ("input_ids", "attention_mask", "decoder_ids")
    positional = activation_scores(by_position, [tuple(b[k] for k in keys) for b in batches])
    assert named.keys() == positional.keys()
    for name in named:
        assert torch.allclose(named[name], positional[name])


def test_batches_must_name_the_same_arguments(model):
    first, second = _example(), _example(seed=1)
    del second["decoder_ids"]
    with pytest.raises(ValueError, match="same arguments"):
        activation_scores(model, [first, second])


def test_an_argument_the_forward_does_not_take_is_named(model):
    with pytest.raises(ValueError, match="'token_type_ids'.*does not take"):
        shrink_graph(model, {**_example(), "token_type_ids": torch.zeros(4, 9)})
    with pytest.raises(ValueError, match="no tensor"):
        shrink_graph(model, {"scale": 2.0})


def test_flops_by_name_count_what_the_keywords_run(model):
    example = _example()
    ids = example["input_ids"]
    assert example_flops(model, {"input_ids": ids}) == example_flops(model, ids)
    mask = example["attention_mask"]
    assert example_flops(model, {"input_ids": ids, "attention_mask": mask}) == example_flops(
        model, (ids, mask)
    )


def test_a_model_shrunk_from_a_keyword_example_saves_and_loads(model, tmp_path):
    example = _example()
    keep = keep_units(activation_scores(model, example), sparsity=0.5)
    result = shrink_graph(model, example, prune_units=keep)
    save_shrunk(result.model, tmp_path / "encoder")
    loaded = load_shrunk(tmp_path / "encoder", bp.convert(Encoder(), "gaussian"))
    assert type(loaded) is Encoder and loaded.up.out_features == 16
    other = _example(rows=2, seed=5)
    assert torch.allclose(_mean_output(loaded.eval(), other), _mean_output(result.model, other))


def test_a_flops_budget_by_name(model):
    example = _example()
    scores = activation_scores(model, example)
    budget = bp.compress.keep_units_for_flops(model, scores, example, 0.6)
    assert budget.flops <= 0.6 * budget.dense_flops
    small = shrink_graph(model, example, prune_units=budget.masks)
    assert example_flops(small.model, example) == budget.flops
