"""fit(lr_multipliers=...): per-parameter learning rates by name suffix, resumable."""

import pytest
import torch

import bayesprune as bp
from bayesprune.models import mlp


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] > 0).long()


def _model():
    torch.manual_seed(1)
    return mlp(5, [4], 2, family="spike_slab", input_gates=True)


def test_first_adam_step_moves_each_group_by_its_own_rate():
    """Adam's first step is lr · sign(gradient): gates move 10 × as far as the slabs."""
    x, y = _data()
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = bp.fit(
        model,
        (x, y),
        epochs=1,
        batch_size=len(x),  # one step
        lr=1e-3,
        lr_multipliers={"gate_logit": 10.0},
        progress=False,
    )
    for name, p in model.named_parameters():
        step = (p.detach() - before[name]).abs()
        moved = step[step > 0]
        expected = 1e-2 if name.endswith("gate_logit") else 1e-3
        assert len(moved) > 0, name
        torch.testing.assert_close(moved, torch.full_like(moved, expected), rtol=1e-3, atol=0)
    assert history.last()["lr"] == pytest.approx(1e-3)  # the base rate is what is recorded


def test_first_matching_key_wins_and_schedule_scales_every_group():
    x, y = _data()
    model = _model()
    gate = model[0].input_gate_logit
    start = gate.detach().clone()
    node_start = model[0].gate_logit.detach().clone()
    bp.fit(
        model,
        (x, y),
        epochs=1,
        batch_size=len(x),
        lr=1e-3,
        lr_schedule="cosine",  # epoch 0 of a cosine schedule: the full rate
        lr_multipliers={"input_gate_logit": 30.0, "gate_logit": 3.0},
        progress=False,
    )
    torch.testing.assert_close(
        (gate.detach() - start).abs().max(), torch.tensor(3e-2), rtol=1e-3, atol=0
    )
    node_step = (model[0].gate_logit.detach() - node_start).abs().max()
    torch.testing.assert_close(node_step, torch.tensor(3e-3), rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [({"no_such_param": 2.0}, "matches no parameter"), ({"gate_logit": 0.0}, "> 0")],
)
def test_bad_multipliers_are_clear_errors(multipliers, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        bp.fit(_model(), (x, y), epochs=1, lr_multipliers=multipliers, progress=False)


def test_resume_with_multipliers_equals_uninterrupted_run(tmp_path):
    x, y = _data(96)
    settings = dict(
        epochs=3, batch_size=32, seed=5, lr=1e-2, lr_multipliers={"gate_logit": 5.0}, progress=False
    )
    straight = _model()
    bp.fit(straight, (x, y), checkpoint_dir=tmp_path / "a", **settings)

    class Stop(Exception):
        pass

    def stop(record):
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        bp.fit(_model(), (x, y), checkpoint_dir=tmp_path / "b", callbacks=[stop], **settings)
    resumed = _model()
    bp.fit(resumed, (x, y), checkpoint_dir=tmp_path / "b", resume=True, **settings)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _gaussian_model():
    torch.manual_seed(2)
    return torch.nn.Sequential(bp.nn.BayesLinear(5, 4), torch.nn.ReLU(), bp.nn.BayesLinear(4, 2))


def _first_step_sizes(model, **fit_kwargs):
    """{parameter name: the largest move of its first Adam step} (Adam's first step is
    lr · sign(gradient), so this is the parameter's rate)."""
    x, y = _data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bp.fit(model, (x, y), epochs=1, batch_size=len(x), lr=1e-3, progress=False, **fit_kwargs)
    return {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}


def test_gaussian_layers_train_sigma_at_their_declared_third_of_the_rate():
    steps = _first_step_sizes(_gaussian_model())
    for name, step in steps.items():
        expected = 1e-3 / 3 if name.endswith("_rho") else 1e-3
        assert step == pytest.approx(expected, rel=1e-3), name


def test_the_callers_multiplier_overrides_the_declared_one():
    steps = _first_step_sizes(_gaussian_model(), lr_multipliers={"weight_rho": 2.0})
    assert steps["0.weight_rho"] == pytest.approx(2e-3, rel=1e-3)
    assert steps["0.bias_rho"] == pytest.approx(1e-3 / 3, rel=1e-3)  # not named: declared
    assert steps["2.weight_mu"] == pytest.approx(1e-3, rel=1e-3)


def test_declared_multipliers_name_only_the_declaring_layers_parameters():
    from bayesprune.optim import declared_multipliers

    gaussian = declared_multipliers(
        torch.nn.Sequential(torch.nn.Sequential(bp.nn.BayesLinear(3, 2)))
    )
    third = pytest.approx(1 / 3)
    assert gaussian == {"0.0.weight_rho": third, "0.0.bias_rho": third}
    assert declared_multipliers(_model()) == {}  # spike-and-slab slabs keep the full rate


def test_reestimating_the_variances_trains_sigma_at_its_own_rate():
    """`reestimate_variances(lr=...)` names the scales' rate: no declared third on top."""
    x, y = _data()
    model = _gaussian_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bp.reestimate_variances(model, (x, y), epochs=1, batch_size=len(x), lr=1e-3, progress=False)
    for name, p in model.named_parameters():
        step = (p.detach() - before[name]).abs().max().item()
        assert step == pytest.approx(1e-3 if name.endswith("_rho") else 0.0, rel=1e-3), name


def test_resuming_with_other_rate_groups_is_one_clear_error(tmp_path):
    """A checkpoint written with σ at the full rate (one group, as before the declared
    third) does not resume into the default's two groups, and says how to resume it."""
    from bayesprune.io import CheckpointError

    x, y = _data()
    settings = dict(epochs=2, batch_size=32, checkpoint_dir=tmp_path, progress=False)
    bp.fit(_gaussian_model(), (x, y), **{**settings, "epochs": 1}, lr_multipliers={"_rho": 1.0})
    with pytest.raises(CheckpointError, match=r'1 parameter group.*has 2.*"_rho": 1.0'):
        bp.fit(_gaussian_model(), (x, y), **settings, resume=True)
    resumed = bp.fit(
        _gaussian_model(), (x, y), **settings, resume=True, lr_multipliers={"_rho": 1.0}
    )
    assert len(resumed.epochs) == 2
