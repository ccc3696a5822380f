"""Stage 1's narrowing (hopeless candidates stop early) against the exact path."""

import numpy as np
import pytest
import torch

from bayesprune.likelihoods import make_likelihood
from bayesprune.screen import screen_features
from bayesprune.screen_batched import Narrowing, Training, paired_gains

FAST = Narrowing(at=0.3, keep=3, null=10, first_round=1)  # applies from 27 candidates on


def _interaction_data(n: int, p: int, seed: int):
    """x1 acts only with x0 (no main effect: its effect is odd in x0); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, p, generator=g) * 2 - 1
    y = 6 * x[:, 0] * x[:, 1].abs() + 2 * x[:, 0] + 0.3 * torch.randn(n, generator=g)
    return x, y


def test_members_that_train_on_end_with_the_gains_of_the_full_run():
    x, y = _interaction_data(600, 40, seed=0)
    how = Training(
        likelihood=make_likelihood("gaussian"), out_features=1, hidden=(8,),
        activation="relu", epochs=30, min_steps=0, lr=2e-2, batch_size=128, mc_samples=4,
    )  # fmt: skip
    candidates = list(range(1, 40))
    full = paired_gains(x, y, [0], candidates, how, [0])[0]
    fast = paired_gains(x, y, [0], candidates, how, [0], narrowing=FAST)[0]
    on = ~torch.isnan(fast)
    null = FAST.null_sample(len(candidates), 0)
    assert on[null].all() and 10 <= int(on.sum()) <= 13  # the null sample and the top 3
    assert on[0]  # x1, the interacting feature, leads at the cut
    assert torch.isfinite(full).all()
    # stopped members are skipped, the others follow their own path of the full run
    torch.testing.assert_close(fast[on], full[on], atol=1e-3, rtol=1e-4)


def test_narrowed_screen_makes_the_exact_screens_decisions():
    x, y = _interaction_data(600, 40, seed=0)
    kwargs = {"hidden": (8,), "epochs": 60, "min_steps": 0, "lr": 2e-2, "seed": 0}
    exact = screen_features((x, y), [0], narrowing=None, **kwargs)
    fast = screen_features((x, y), [0], narrowing=FAST, **kwargs)
    assert exact.added == fast.added == [1]
    assert fast.shortlist == exact.shortlist and fast.decoys == exact.decoys
    assert np.isnan(fast.gains).sum() >= len(fast.candidates) - 13  # most stopped early
    assert not np.isnan(exact.gains).any()
    np.testing.assert_allclose(fast.confirm_gains, exact.confirm_gains, rtol=1e-3, atol=1e-2)
    assert fast.as_dict()["top"][0]["feature"] == 1


def test_narrowing_keeps_the_feature_a_later_round_needs():
    """y = 3·x0 + 8·x0·|x1| + 5·x1·x2 + noise columns: x2 shows no gain until x1 is in;
    the second round (narrowed too) still finds it among 38 candidates."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 40, generator=g) * 2 - 1
    y = 3 * x[:, 0] + 8 * x[:, 0] * x[:, 1].abs() + 5 * x[:, 1] * x[:, 2]
    y = y + 0.3 * torch.randn(1200, generator=g)
    kwargs = {"hidden": (16,), "epochs": 40, "min_steps": 0, "lr": 2e-2, "seed": 0}
    fast = screen_features((x, y), [0], rounds=2, narrowing=FAST, **kwargs)
    assert np.isnan(fast.gains).any()  # the narrowing did apply
    assert fast.rounds == [[1], [2]] and fast.features == [0, 1, 2]


def test_small_fields_are_not_narrowed_and_bad_settings_are_refused():
    assert not Narrowing().applies(400, 2) and Narrowing().applies(996, 2)
    assert not Narrowing().applies(996, 1)  # by default the first round is exact
    x, y = _interaction_data(200, 12, seed=0)
    result = screen_features((x, y), [0], hidden=(4,), epochs=5, min_steps=0, narrowing=FAST)
    assert not np.isnan(result.gains).any()  # 11 candidates: nothing to gain
    with pytest.raises(ValueError, match="keep >= 1"):
        Narrowing(at=1.5)
    how = Training(
        likelihood=make_likelihood("gaussian"), out_features=1, hidden=(4,),
        activation="relu", epochs=1, min_steps=0, lr=1e-2, batch_size=64, mc_samples=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="stage 1"):
        paired_gains(x, y, [0], [1, 2], how, [0, 1], narrowing=FAST)
