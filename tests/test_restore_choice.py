"""`choose_restoration`: the CLI's restore rule as a library call, on a tiny pruned net."""

import pytest
import torch

import bayesprune as bp
from bayesprune import compress
from bayesprune.calibration import TemperatureScaled
from bayesprune.restore_choice import restoring_methods


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    x = centres[y] + torch.randn(n, 2, generator=g)
    return torch.cat([x, torch.randn(n, 4, generator=g)], 1), y


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    train, val = _blobs(600, 0), _blobs(400, 1)
    model = bp.mlp(6, [32], 3, family="gaussian")
    bp.fit(model, train, epochs=15, lr=1e-2, batch_size=64, progress=False, seed=0)
    scores = compress.weight_scores(model, "snr")
    return model, compress.pruned_copy(model, scores, 0.9), train, val


def test_the_choice_follows_the_rule_and_returns_the_chosen_network(pruned):
    trained, model, train, val = pruned
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ood = torch.randn(200, 6) * 4
    choice = bp.choose_restoration(
        model, val, train=train, ood=ood, trained=trained, samples=8, epochs=1, batch_size=64
    )
    assert set(choice.candidates) == {
        "none", "temperature", "variances", "finetune", "finetune+temperature",
    }  # fmt: skip
    assert choice.rows == {"fit": 200, "choose": 200}
    assert choice.model is choice.models[choice.method]
    chosen = choice.candidates[choice.method]
    assert chosen["eligible"] and chosen["tied"]
    tied = [c for c in choice.candidates.values() if c.get("tied")]
    assert chosen["validation"]["ece"] == min(c["validation"]["ece"] for c in tied)
    assert {"ood_auroc_entropy", "ood_auroc_mi"} <= set(chosen["validation"])
    assert set(choice.trained) == set(chosen["validation"])  # the unpruned net, same rows
    assert "OOD AUROC" in choice.rule and "standard error" in choice.rule
    assert isinstance(choice.models["temperature"], TemperatureScaled)
    assert choice.temperature == (
        float(choice.model.temperature) if isinstance(choice.model, TemperatureScaled) else None
    )
    # the input network is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_none_and_one_method_and_bad_requests(pruned):
    _, model, _, val = pruned
    alone = bp.choose_restoration(model, val, methods="none")
    assert alone.method == "none" and alone.model is model and list(alone.candidates) == ["none"]
    one = bp.choose_restoration(model, val, methods="temperature", samples=4, tie_se=0)
    assert list(one.candidates) == ["none", "temperature"]
    assert one.rule.endswith("the lowest validation NLL")
    with pytest.raises(ValueError, match="pass train="):
        bp.choose_restoration(model, val, methods="finetune")
    with pytest.raises(ValueError, match="at least 2 validation rows"):
        bp.choose_restoration(model, (val[0][:1], val[1][:1]))
    plain = bp.mlp(6, [8], 3, family="deterministic")
    with pytest.raises(ValueError, match="has none"):
        restoring_methods("variances", plain)
    assert "variances" not in restoring_methods("auto", plain)
    with pytest.raises(ValueError, match="valid"):
        restoring_methods("sharpen", model)
