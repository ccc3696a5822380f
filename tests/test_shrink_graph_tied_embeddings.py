"""A language model whose output layer shares the embedding table's weight (GPT-2's
`wte` and `lm_head`): the stream's columns go from both alike and the two stay one
weight, through shrinking and through save / load; a width read off the stream that
only sizes a view of the same channels (GPT-2's last `view`) follows them."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph

WIDTH, VOCAB = 12, 25


class TinyGPT(nn.Module):
    """Token and position tables, two pre-norm MLP blocks, a final norm, an output layer
    tied to the token table. `view` picks how the forward uses the width it reads."""

    def __init__(self, view: str = "same", head: bool = True) -> None:
        super().__init__()
        self.view, self.head_used = view, head
        self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(16, WIDTH)
        self.norms = nn.ModuleList([nn.LayerNorm(WIDTH) for _ in range(2)])
        self.ups = nn.ModuleList([nn.Linear(WIDTH, 24) for _ in range(2)])
        self.downs = nn.ModuleList([nn.Linear(24, WIDTH) for _ in range(2)])
        self.final = nn.LayerNorm(WIDTH)
        self.other = nn.Linear(WIDTH, WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids: Tensor, past: Tensor | None = None) -> Tensor:
        shape = ids.size()
        # a branch on an optional argument, as GPT-2's
        positions = torch.arange(shape[-1], device=ids.device)[None] if past is None else past
        h = self.wte(ids) + self.wpe(positions)
        for norm, up, down in zip(self.norms, self.ups, self.downs, strict=True):
            h = h + down(torch.relu(up(norm(h))))
        h = self.final(h)
        if self.view == "same":  # GPT-2: output_shape = (-1,) + shape[1:] + (h.size(-1),)
            h = h.view((-1,) + shape[1:] + (h.size(-1),))  # noqa: RUF005 (GPT-2's own)
        elif self.view == "other":  # the stream's width sizes another tensor's view
            scale = self.other(h).reshape(-1, h.size(-1)).abs().mean()
            return self.lm_head(h) * scale
        return self.lm_head(h) if self.head_used else h.mean(1)


def _ids(length: int = 7) -> Tensor:
    return torch.randint(0, VOCAB, (3, length), generator=torch.Generator().manual_seed(3))


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    with pytest.warns(bp.nn.KeptDeterministicWarning, match="lm_head"):
        return bp.convert(TinyGPT(**kwargs), "gaussian").double().eval()


def _run(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(ids)


def test_the_stream_narrows_and_the_output_layer_stays_tied(tmp_path):
    model, ids = _model(), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isfinite(scores["downs.1"]).all()
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    shrunk = result.model
    assert shrunk.wte.weight.shape == (VOCAB, 6) and shrunk.lm_head.in_features == 6
    assert shrunk.lm_head.weight is shrunk.wte.weight  # one weight, as before
    assert result.max_abs_difference < 1e-10
    assert _run(shrunk, _ids(11)).shape == (3, 11, VOCAB)  # the view follows the width
    path = save_shrunk(shrunk, tmp_path / "gpt.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(TinyGPT(), "gaussian").double())
    assert loaded.lm_head.weight is loaded.wte.weight
    torch.testing.assert_close(_run(loaded, ids), _run(shrunk, ids), rtol=0, atol=0)


def test_a_tied_model_saves_its_table_once(tmp_path):
    model = TinyGPT().double().eval()
    path = save_shrunk(model, tmp_path / "whole.safetensors")
    loaded = load_shrunk(path, lambda: TinyGPT().double())
    assert loaded.lm_head.weight is loaded.wte.weight
    torch.testing.assert_close(loaded(_ids()), model(_ids()), rtol=0, atol=0)


def test_a_width_that_sizes_another_tensors_view_keeps_the_stream():
    model, ids = _model(view="other"), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isinf(scores["downs.0"]).all()
    assert torch.isfinite(scores["ups.0"]).all()


def test_a_table_whose_tied_layer_the_example_does_not_reach_keeps_its_columns():
    """The output layer is not called: cutting the table alone would untie them."""
    torch.manual_seed(0)
    with pytest.warns(bp.nn.KeptDeterministicWarning):
        model = bp.convert(TinyGPT(view="none", head=False), "gaussian").double().eval()
    scores = activation_scores(model, (_ids(),))
    assert torch.isinf(scores["downs.0"]).all()


class SharedTable(nn.Module):
    """BART's layout: `shared`, the encoder's and the decoder's token tables are three
    modules holding one weight, and so does the output layer; the tokens are shifted
    right in place (`shifted[:, 1:] = ids[:, :-1]`), which a symbolic trace cannot
    record; the encoder's output reaches the decoder by a cross term."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(VOCAB, WIDTH)
        self.enc_tokens, self.dec_tokens = nn.Embedding(VOCAB, WIDTH), nn.Embedding(VOCAB, WIDTH)
        self.enc_tokens.weight = self.dec_tokens.weight = self.shared.weight
        self.enc_norm, self.dec_norm = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.enc_up, self.enc_down = nn.Linear(WIDTH, 20), nn.Linear(20, WIDTH)
        self.cross = nn.Linear(WIDTH, WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.lm_head.weight = self.shared.weight

    def forward(self, ids: Tensor) -> Tensor:
        shifted = ids.new_zeros(ids.shape)
        shifted[:, 1:] = ids[:, :-1].clone()
        enc = self.enc_norm(self.enc_tokens(ids))
        enc = enc + self.enc_down(torch.relu(self.enc_up(enc)))
        dec = self.dec_norm(self.dec_tokens(shifted))
        dec = dec + self.cross(enc.mean(1, keepdim=True))
        return self.lm_head(dec)


def test_one_table_in_three_modules_and_a_tied_head_go_together(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(bp.nn.KeptDeterministicWarning):
        model = bp.convert(SharedTable(), "gaussian").double().eval()
    ids = _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isfinite(scores["enc_down"]).all() and torch.isfinite(scores["cross"]).all()
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    small = result.model
    assert small.shared.weight.shape == (VOCAB, 6) and result.max_abs_difference < 1e-10
    assert small.enc_tokens.weight is small.dec_tokens.weight is small.shared.weight
    assert small.lm_head.weight is small.shared.weight and small.dec_tokens.embedding_dim == 6
    path = save_shrunk(small, tmp_path / "shared.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(SharedTable(), "gaussian").double())
    assert loaded.enc_tokens.weight is loaded.shared.weight is loaded.lm_head.weight
    torch.testing.assert_close(_run(loaded, ids), _run(small, ids), rtol=0, atol=0)
