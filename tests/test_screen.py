"""Evidence screen: an interaction-only feature is found, noise columns are not."""

import numpy as np
import pytest
import torch

from bayesprune.screen import screen_features


def _interaction_data(n: int, p: int, seed: int, task: str):
    """x1 acts only with x0 (no main effect: its effect is odd in x0); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, p, generator=g) * 2 - 1
    if task == "regression":
        y = 6 * x[:, 0] * x[:, 1].abs() + 2 * x[:, 0] + 0.3 * torch.randn(n, generator=g)
        return x, y
    return x, (x[:, 0] * x[:, 1] > 0).long()  # XOR: neither feature alone predicts y


@pytest.mark.parametrize(
    ("task", "likelihood"), [("regression", "gaussian"), ("classification", "categorical")]
)
def test_screen_adds_the_interacting_feature_and_no_noise(task, likelihood):
    x, y = _interaction_data(600, 16, seed=0, task=task)
    result = screen_features(
        (x, y), [0], likelihood=likelihood, hidden=(8,), epochs=60, min_steps=0, lr=2e-2, seed=0
    )
    assert result.candidates == list(range(1, 16))
    assert result.gains.shape == (15,) and np.isfinite(result.gains).all()
    assert int(np.argmax(result.gains)) == 0  # candidate x1 has the largest evidence gain
    assert result.added == [1]  # and is the only one added
    assert result.features == [0, 1]
    assert result.gains[0] > result.min_gain and result.z[0] > result.z_critical
    record = result.as_dict()
    assert record["top"][0]["feature"] == 1 and record["added"] == [1]


def test_screen_with_nothing_selected_finds_main_effects():
    x, y = _interaction_data(600, 16, seed=1, task="regression")
    result = screen_features((x, y), [], hidden=(8,), epochs=60, min_steps=0, lr=2e-2, seed=0)
    assert 0 in result.added  # x0 has a main effect: found from an empty start
    assert not set(result.added) - {0, 1}


def test_screen_rejects_bad_requests():
    x, y = _interaction_data(50, 4, seed=0, task="regression")
    with pytest.raises(ValueError, match="both selected and candidates"):
        screen_features((x, y), [0], candidates=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        screen_features((x, y), [7])
    with pytest.raises(ValueError, match="no candidate"):
        screen_features((x, y), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="tabular"):
        screen_features((x.reshape(50, 2, 2), y), [0])
    with pytest.raises(ValueError, match="alpha"):
        screen_features((x, y), [0], alpha=1.5)
    with pytest.raises(ValueError, match="rounds"):
        screen_features((x, y), [0], rounds=0)


def test_a_later_round_finds_the_feature_that_needs_an_added_one():
    """y = 3·x0 + 8·x0·|x1| + 5·x1·x2: from S = {x0}, x2 has no effect until x1 is in."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 12, generator=g) * 2 - 1
    y = 3 * x[:, 0] + 8 * x[:, 0] * x[:, 1].abs() + 5 * x[:, 1] * x[:, 2]
    y = y + 0.3 * torch.randn(1200, generator=g)
    kwargs = {"hidden": (16,), "epochs": 60, "min_steps": 0, "lr": 2e-2, "seed": 0}
    one = screen_features((x, y), [0], rounds=1, **kwargs)
    assert one.added == [1] and one.rounds == [[1]]
    two = screen_features((x, y), [0], rounds=2, **kwargs)
    assert two.rounds == [[1], [2]] and two.features == [0, 1, 2]


def test_small_data_gets_enough_steps_to_see_a_main_effect():
    """120 rows are one batch: 20 epochs are 20 steps, too few for the extra weights to
    leave their initial KL; min_steps trains on until x1's main effect shows."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 10, generator=g) * 2 - 1
    y = 3 * x[:, 0] + x[:, 1] + 0.3 * torch.randn(120, generator=g)
    kwargs = {"hidden": (16,), "epochs": 20, "lr": 2e-2, "seed": 0}
    short = screen_features((x, y), [0], min_steps=0, **kwargs)
    assert short.added == [] and short.gains[0] < 0  # x1's gain is still the KL it costs
    assert screen_features((x, y), [0], **kwargs).added == [1]


def test_the_callers_random_state_is_left_alone():
    x, y = _interaction_data(200, 6, seed=0, task="regression")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    screen_features((x, y), [0], hidden=(4,), epochs=2, min_steps=0, seed=5)
    assert torch.equal(torch.rand(3), expected)
