"""Attention heads: split from torch's fused module, scored, deleted, saved and exported."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.compress import (
    activation_scores,
    apply_masks,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
    shrink_graph,
    weight_masks_for,
)
from bayesprune.compress.adapters import mask_rows
from bayesprune.metrics import example_flops
from bayesprune.nn import BayesLinear, MultiheadAttention, split_attention


class TinyTransformer(nn.Module):
    """Tokens → one pre-norm attention block with an MLP → mean over tokens → classes."""

    def __init__(self, heads: int = 4, width: int = 16, features: int = 5, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 32), nn.GELU(), nn.Linear(32, width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        n = self.norm(h)
        a, _ = self.attn(n, n, n, need_weights=False)
        h = h + a
        h = h + self.mlp(h)
        return self.head(h.mean(1))


def _tokens(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 6, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(x)


def _with_biases(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-zero bias means everywhere, so that folding a head's constant is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "bias_mu")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_split_attention_computes_what_torch_computes(batch_first, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero biases
    ours = split_attention(mha).eval()
    assert isinstance(ours, MultiheadAttention) and ours.num_heads == 2
    q, k = torch.randn(3, 5, 8), torch.randn(3, 7, kdim or 8)
    if not batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True
    masks = torch.randn(5, 7)
    for options in (
        {},
        {"key_padding_mask": padding},
        {"attn_mask": masks},
        {"attn_mask": masks > 1.0, "key_padding_mask": padding},
        {"average_attn_weights": False},
        {"attn_mask": torch.randn(3 * 2, 5, 7)},
    ):
        expected, expected_weights = mha(q, k, k, **options)
        got, weights = ours(q, k, k, **options)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    assert ours(q, k, k, need_weights=False)[1] is None


def test_causal_and_unbatched_calls_match_torch():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 4, batch_first=True).eval()
    ours = split_attention(mha).eval()
    x = torch.randn(2, 5, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(
        ours(x, x, x, is_causal=True)[0], mha(x, x, x, attn_mask=causal, is_causal=True)[0]
    )
    torch.testing.assert_close(ours(x[0], x[0], x[0])[0], mha(x[0], x[0], x[0])[0])


def test_a_torch_transformer_encoder_runs_split():
    torch.manual_seed(2)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
    encoder.eval()
    split = split_attention(encoder)
    assert isinstance(split.layers[0].self_attn, MultiheadAttention)
    assert isinstance(encoder.layers[0].self_attn, nn.MultiheadAttention)  # not in place
    x = torch.randn(2, 5, 8)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, -1] = True
    torch.testing.assert_close(split(x), encoder(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        split(x, src_key_padding_mask=padding),
        encoder(x, src_key_padding_mask=padding),
        atol=1e-5,
        rtol=1e-5,
    )


def test_attention_with_extra_key_bias_is_refused():
    with pytest.raises(ValueError, match="add_bias_kv"):
        split_attention(nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_convert_splits_attention_into_bayesian_projections():
    plain = TinyTransformer().double()
    model = bp.convert(plain, "gaussian", split_attention=True, init_from_weights=True)
    assert isinstance(model.attn, MultiheadAttention)
    assert isinstance(model.attn.q_proj, BayesLinear)
    assert isinstance(plain.attn, nn.MultiheadAttention)  # the input model is not changed
    x = _tokens()
    torch.testing.assert_close(_out(model, x), _out(plain, x))
    whole = bp.convert(plain, "gaussian")  # without the option torch's attention stays
    assert isinstance(whole.attn, nn.MultiheadAttention)
    assert bp.kl(model).item() > bp.kl(whole).item()  # the projections have posteriors now


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "sparse_vd_group", "spike_slab"])
def test_removed_heads_leave_the_model_with_those_value_rows_masked(family):
    torch.manual_seed(3)
    model = _with_biases(bp.convert(TinyTransformer().double(), family, split_attention=True))
    x = _tokens()
    result = shrink_graph(model, x, prune_units={"attn": [0, 2]})
    small = result.model
    assert small.attn.num_heads == 2 and small.attn.q_proj.out_features == 8
    assert small.attn.out_proj.in_features == 8
    assert result.heads == {"attn": [0, 2]}
    assert result.shapes["attn"]["num_heads"] == 2
    reference = bp.convert(TinyTransformer().double(), family, split_attention=True)
    reference.load_state_dict(model.state_dict())
    mask_rows(reference, "attn.v_proj", [*range(4, 8), *range(12, 16)])  # heads 1 and 3
    torch.testing.assert_close(_out(small, x), _out(reference, x), atol=1e-9, rtol=1e-7)
    assert not torch.allclose(_out(small, x), _out(model, x), atol=1e-4)  # heads mattered
    small.train()
    assert small(x).shape == (8, 3)  # samples through the narrower attention


def test_dead_heads_go_without_being_asked():
    torch.manual_seed(4)
    model = _with_biases(bp.convert(TinyTransformer().double(), "gaussian", split_attention=True))
    mask_rows(model, "attn.v_proj", range(4, 8))  # head 1: no value weights (a constant)
    mask_rows(model, "attn.out_proj", range(8, 12), columns=True)  # head 2: never read
    x = _tokens()
    result = shrink_graph(model, x)
    assert result.heads == {"attn": [0, 3]}
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=1e-9, rtol=1e-7)


def test_head_scores_rank_heads_by_how_much_the_output_moves():
    torch.manual_seed(5)
    model = split_attention(TinyTransformer().double())
    with torch.no_grad():
        model.attn.out_proj.weight[:, 0:4] *= 0.01  # head 0 barely reaches the output
        model.attn.out_proj.weight[:, 12:16] *= 5.0  # head 3 dominates it
    x = _tokens(64)
    scores = activation_scores(model, x)["attn"]
    assert scores.shape == (4,)
    assert int(scores.argmin()) == 0 and int(scores.argmax()) == 3
    change = []
    for head in range(4):
        keep = torch.ones(4, dtype=torch.bool)
        keep[head] = False
        small = shrink_graph(model, x, prune_units={"attn": keep}).model
        change.append(float((_out(small, x) - _out(model, x)).abs().mean()))
    assert change[0] == min(change) and change[3] == max(change)
    kept = keep_units({"attn": scores}, sparsity=0.5)["attn"]
    assert kept.tolist()[0] is False and kept.tolist()[3] is True and int(kept.sum()) == 2


def test_a_head_pruned_model_saves_loads_and_exports(tmp_path):
    torch.manual_seed(6)
    model = _with_biases(bp.convert(TinyTransformer().double(), "gaussian", split_attention=True))
    x = _tokens()
    keep = keep_units(activation_scores(model, x), sparsity=0.5)
    small = shrink_graph(model, x, prune_units=keep).model
    assert small.attn.num_heads == 2 and small.mlp[0].out_features == 16
    path = save_shrunk(small, tmp_path / "tiny.safetensors")
    # a fresh instance built as trained (split, converted), or as the user's plain class
    for fresh in (
        lambda: bp.convert(TinyTransformer(), "gaussian", split_attention=True).double(),
        lambda: bp.convert(TinyTransformer(), "gaussian").double(),
    ):
        loaded = load_shrunk(path, fresh)
        assert loaded.attn.num_heads == 2
        torch.testing.assert_close(_out(loaded, x), _out(small, x))
    pytest.importorskip("onnxruntime")
    plain = bp.to_deterministic(small).float()
    onnx = export_onnx(plain, tmp_path / "tiny.onnx", (6, 5))
    assert onnx_difference(onnx, plain, x.float()) < 1e-5


def test_a_per_head_mask_after_removal_names_the_problem():
    model = split_attention(TinyTransformer())
    small = shrink_graph(model, _tokens().float(), prune_units={"attn": [1]}).model.attn
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="1 heads"):
        small(x, x, x, attn_mask=torch.zeros(2 * 4, 5, 5))
    assert small(x, x, x, attn_mask=torch.zeros(2 * 1, 5, 5))[0].shape == (2, 5, 16)


def test_a_bayesian_transformer_with_split_attention_learns():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(400, 6, 5, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long() + (x[:, :, 1].sum(1) > 2).long()
    model = bp.convert(TinyTransformer(), "gaussian", split_attention=True, prior_scale=0.5)
    history = bp.fit(model, (x[:300], y[:300]), (x[300:], y[300:]), epochs=15, batch_size=50,
                     lr=1e-2, progress=False)  # fmt: skip
    assert history.last()["val_accuracy"] > 0.8  # the majority class is about 0.5


def test_flops_count_attention_and_fall_with_its_heads():
    fused = TinyTransformer().double()
    split = split_attention(fused)
    x = _tokens()
    assert example_flops(split, x) == example_flops(fused, x)  # one function, one cost
    small = shrink_graph(split, x, prune_units={"attn": [0]}).model
    tokens, width, size = 6, 16, 4
    per_head = 2 * tokens * 4 * size * width + 2 * 2 * tokens * tokens * size  # q, k, v, out
    assert example_flops(split, x) - example_flops(small, x) == 3 * per_head


def test_head_masks_are_value_rows_and_shrink_deletes_what_they_silence():
    torch.manual_seed(8)
    model = _with_biases(bp.convert(TinyTransformer().double(), "gaussian", split_attention=True))
    keep = torch.tensor([True, False, True, False])
    masks = weight_masks_for(model, {"attn": keep}, "unit")
    assert set(masks) == {"attn.v_proj"}
    assert masks["attn.v_proj"].flatten(1).any(1).tolist() == keep.repeat_interleave(4).tolist()
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    x = _tokens()
    # what the CLI passes on: the rows each projection keeps; heads without values go
    rows = {"attn.v_proj": masks["attn.v_proj"].flatten(1).any(1), "attn.q_proj": [0, 1, 2]}
    result = shrink_graph(masked, x, prune_units=rows)
    assert result.heads == {"attn": [0, 2]}
    assert result.model.attn.q_proj.out_features == 8
    q = bp.to_deterministic(result.model.attn.q_proj).weight
    assert int(q.flatten(1).ne(0).any(1).sum()) == 3  # q units 0-2 stay, the others masked


def test_self_compression_rounds_remove_heads_with_the_other_units():
    torch.manual_seed(9)
    model = split_attention(TinyTransformer().double())
    with torch.no_grad():
        model.attn.out_proj.weight[:, 4:12] *= 1e-3  # heads 1 and 2 barely matter
    x = _tokens(32)
    reference = _out(model, x)

    def evaluate(candidate: nn.Module) -> dict[str, float]:  # agreement with the input
        return {
            "accuracy": float((_out(candidate, x).argmax(1) == reference.argmax(1)).double().mean())
        }

    result = bp.compress.self_compress(
        model, evaluate, score="activation", example_inputs=x[:2], score_data=x,
        fraction=0.5, max_rounds=1, tolerance=0.2,
    )  # fmt: skip
    assert result.model.attn.num_heads == 2
    assert result.model.attn.q_proj.out_features == 8
    # the residual stream is units too (through the attention's projections), and the
    # round kept the agreement within its tolerance
    assert result.model.embed.out_features < 16
    assert result.model.attn.embed_dim == result.model.embed.out_features
    assert evaluate(result.model)["accuracy"] >= 0.8
