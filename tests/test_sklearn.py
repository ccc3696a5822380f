"""scikit-learn estimators: the estimator checks, Pipeline / cross_val_score / GridSearchCV,
clone, and feature selection that finds the informative inputs."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.feature_selection import SelectFromModel
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from bayesprune.sklearn import BayesianMLPClassifier, BayesianMLPRegressor

# Monte-Carlo prediction draws the local-reparameterisation noise per row from one
# seeded stream, so a row's prediction depends (by MC error only) on the rows that share
# its batch; with predict_mode="mean" these checks pass (see test below).
MC_EXPECTED_FAILURES = {
    "check_methods_subset_invariance": "MC noise is drawn per row from one seeded stream",
    "check_methods_sample_order_invariance": "MC noise is drawn per row from one seeded stream",
}


def _failures(estimator, expected):
    results = check_estimator(estimator, expected_failed_checks=expected, on_fail=None)
    failed = [r for r in results if r["status"] == "failed"]
    return [(r["check_name"], str(r["exception"])[:200]) for r in failed]


@pytest.mark.slow
@pytest.mark.parametrize("cls", [BayesianMLPClassifier, BayesianMLPRegressor])
def test_scikit_learn_estimator_checks(cls):
    estimator = cls((8,), epochs=30, samples=5, random_state=0)
    assert _failures(estimator, MC_EXPECTED_FAILURES) == []


@pytest.mark.slow
def test_posterior_mean_prediction_passes_the_invariance_checks():
    estimator = BayesianMLPClassifier((8,), epochs=30, predict_mode="mean", random_state=0)
    assert _failures(estimator, None) == []


def _xor_like(n=200, p=6, seed=0):
    """Labels from features 0 and 1 only; the other columns are noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = (X[:, 0] + 2 * X[:, 1] > 0).astype(int)
    return X, y


def test_clone_keeps_parameters_and_fit_sets_only_underscore_attributes():
    est = BayesianMLPClassifier((5,), epochs=3, lr=0.02, random_state=1)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    assert not [k for k in vars(twin) if k.endswith("_")]
    X, y = _xor_like(60)
    twin.fit(X, y)
    assert twin.get_params() == est.get_params()
    assert {"model_", "classes_", "feature_importances_", "n_features_in_"} <= set(vars(twin))


def test_pipeline_cross_val_score_and_grid_search():
    X, y = _xor_like(120)
    est = BayesianMLPClassifier((8,), epochs=15, batch_size=16, lr=0.02, random_state=0)
    pipe = make_pipeline(StandardScaler(), est)
    scores = cross_val_score(pipe, X, y, cv=2)
    assert scores.shape == (2,) and scores.mean() > 0.7  # chance is about 0.5
    grid = GridSearchCV(
        BayesianMLPClassifier((4,), epochs=10, batch_size=16, random_state=0),
        {"lr": [1e-4, 3e-2]},
        cv=2,
    ).fit(X, y)
    assert grid.best_params_ == {"lr": 3e-2}  # 10 epochs at 1e-4 barely move


def test_spike_and_slab_input_pips_select_the_informative_features():
    X, y = _xor_like(300, p=8)
    est = BayesianMLPClassifier((8,), epochs=60, lr=0.02, random_state=0).fit(X, y)
    assert est.family_ == "spike_slab" and est.importance_kind_ == "pip"
    pip = est.feature_importances_
    assert pip[:2].min() > pip[2:].max()
    assert est.score(X, y) > 0.85
    support = est.get_support()
    assert support[:2].all() and support.sum() < 8
    np.testing.assert_array_equal(est.transform(X), X[:, support])
    # SelectFromModel / a later Pipeline step sees the same selection
    pipe = make_pipeline(SelectFromModel(est, prefit=False, threshold=0.5), LogisticRegression())
    assert pipe.fit(X, y).score(X, y) > 0.85


def test_regressor_predicts_in_original_units_with_a_standard_deviation():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 4))
    y = 100 + 30 * X[:, 0] + rng.standard_normal(200)
    est = BayesianMLPRegressor((8,), family="gaussian", epochs=40, lr=0.02, random_state=0)
    mean, std = est.fit(X, y).predict(X, return_std=True)
    assert est.importance_kind_ == "norm" and est.feature_importances_.argmax() == 0
    assert est.score(X, y) > 0.8
    assert abs(mean.mean() - 100) < 5 and (std > 0).all() and std.mean() < 30


def test_bad_parameters_raise_in_fit_not_in_init():
    est = BayesianMLPClassifier(family="nope", hidden_layer_sizes=(0,))
    X, y = _xor_like(20)
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        est.fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be positive"):
        BayesianMLPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="unknown predict_mode"):
        BayesianMLPClassifier(predict_mode="best").fit(X, y)


def test_screen_adds_the_feature_the_gates_miss():
    """x1 acts only through x0 (its effect is even in x1): its gate closes, the screen
    finds it, and get_support / transform include it."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (400, 10))
    y = 2 * X[:, 0] + 6 * X[:, 0] * np.abs(X[:, 1]) + 0.3 * rng.standard_normal(400)
    kwargs = {"epochs": 60, "lr": 0.02, "random_state": 0}
    plain = BayesianMLPRegressor((8,), **kwargs).fit(X, y)
    assert plain.screen_ is None and plain.get_support().nonzero()[0].tolist() == [0]
    est = BayesianMLPRegressor((8,), screen=True, screen_epochs=60, **kwargs).fit(X, y)
    assert est.feature_importances_[1] < 0.5  # the gate missed x1 ...
    assert est.screen_.added == [1]  # ... the screen found it
    assert est.get_support().nonzero()[0].tolist() == [0, 1]
    np.testing.assert_array_equal(est.transform(X), X[:, :2])
    with pytest.raises(ValueError, match="input PIPs"):
        BayesianMLPRegressor((8,), family="gaussian", screen=True, epochs=2).fit(X, y)
