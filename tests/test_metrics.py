"""Metrics against hand-computed or brute-force values."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune import metrics as M


def test_accuracy_nll_brier_on_a_hand_case():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 1])
    assert M.accuracy(probs, labels) == 0.5
    assert M.nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2)
    expected = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.9**2 + 0.8**2)) / 2
    assert M.brier(probs, labels) == pytest.approx(expected)
    assert M.brier(torch.eye(3), torch.arange(3)) == 0.0
    assert M.brier(torch.full((3, 3), 1 / 3), torch.arange(3)) == pytest.approx(2 / 3)


def test_ece_matches_a_constructed_case():
    # 10 predictions at confidence 0.9, 6 right; 10 at 0.6, 6 right → |0.6−0.9|/2 + 0
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    labels = torch.tensor([0] * 6 + [1] * 4 + [0] * 6 + [1] * 4)
    assert M.ece(probs, labels) == pytest.approx(0.15)
    bins = M.calibration_bins(probs, labels)
    assert sum(bins.count) == 20 and len(bins.count) == 15
    perfect = torch.tensor([[1.0, 0.0]] * 5)
    assert M.ece(perfect, torch.zeros(5, dtype=torch.long)) == 0.0


def test_uncertainty_decomposition():
    agree = torch.tensor([[[0.2, 0.8]], [[0.2, 0.8]], [[0.2, 0.8]]])
    assert M.mutual_information(agree).item() == pytest.approx(0.0, abs=1e-12)
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert M.mutual_information(disagree).item() == pytest.approx(math.log(2))
    g = torch.Generator().manual_seed(0)
    samples = torch.softmax(torch.randn(7, 5, 4, generator=g), -1)
    total = M.predictive_entropy(samples)
    assert torch.allclose(M.mutual_information(samples), total - M.expected_entropy(samples))
    assert (M.mutual_information(samples) > 0).all()


def test_ood_auroc_and_regression_metrics():
    assert M.ood_auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert M.ood_auroc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert M.rmse([1.0, 2.0], [1.0, 4.0]) == pytest.approx(math.sqrt(2))
    expected = 0.5 * (math.log(2 * math.pi) + math.log(4.0) + 1.0)  # (y − m)² / v = 1
    assert M.gaussian_nll([0.0], [4.0], [2.0]) == pytest.approx(expected)


def test_feature_selection_rates():
    scores = M.selection_scores(selected=[0, 1, 7], truth=[0, 1, 2], p=10)
    assert scores.tpr == pytest.approx(2 / 3) and scores.fnr == pytest.approx(1 / 3)
    assert scores.fdr == pytest.approx(1 / 3) and scores.fpr == pytest.approx(1 / 7)
    assert M.selection_scores([], [0], 5).fdr == 0.0


def test_flops_linear_and_conv_by_brute_force():
    assert M.count_flops(nn.Linear(10, 5), (10,)) == 2 * 10 * 5
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    out = conv(torch.zeros(1, 3, 9, 9))
    assert M.count_flops(conv, (3, 9, 9)) == 2 * out.numel() * 3 * 3 * 3
    assert M.count_flops(bp.lenet_300_100(), (1, 28, 28)) == 2 * (784 * 300 + 300 * 100 + 1000)


def test_model_size_counts_masks_and_bayesian_parameters():
    model = bp.mlp(4, [3], 2)
    size = M.model_size(model, (4,))
    assert size.weights == 4 * 3 + 3 * 2
    assert size.parameters == 2 * (size.weights + 3 + 2)  # mean and rho of each
    assert size.bytes == 4 * (size.weights + 3 + 2)
    mask = torch.ones(3, 4)
    mask[0] = 0
    model[0].set_weight_mask(mask)
    assert M.model_size(model).nonzero_weights == size.weights - 4
    plain = bp.to_deterministic(model)
    assert M.model_size(plain).nonzero_weights == size.weights - 4
    assert M.model_size(plain).parameters == size.weights + 5


def test_numpy_inputs_are_accepted():
    assert M.accuracy(np.array([[0.1, 0.9]]), np.array([1])) == 1.0


def test_ece_equals_a_brute_force_loop_and_bins_are_right_closed():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(200, 4, generator=g, dtype=torch.float64), -1)
    labels = torch.randint(0, 4, (200,), generator=g)
    conf, pred = probs.max(-1)
    brute = 0.0
    for k in range(15):
        lo, hi = k / 15, (k + 1) / 15
        inside = (conf > lo) & (conf <= hi) if k else conf <= hi
        if inside.any():
            gap = (pred[inside] == labels[inside]).double().mean() - conf[inside].mean()
            brute += inside.double().mean().item() * abs(gap.item())
    assert M.ece(probs, labels) == pytest.approx(brute, abs=1e-12)
    on_edges = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.75, 0.25]])  # exact in binary
    edge = M.calibration_bins(on_edges, torch.tensor([0, 1, 0]), n_bins=4)
    assert edge.count == [0, 1, 1, 1]  # (0, .25], (.25, .5], (.5, .75], (.75, 1]


def test_shapes_that_would_broadcast_are_rejected():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    with pytest.raises(ValueError, match="labels must have shape"):
        M.accuracy(probs, torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="out of range"):
        M.nll(probs, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        M.mutual_information(probs)
    with pytest.raises(ValueError, match="same number of elements"):
        M.rmse([1.0, 2.0, 3.0], [1.0])
    with pytest.raises(ValueError, match="variances must be >= 0"):
        M.gaussian_nll([0.0], [-1.0], [0.0])
    with pytest.raises(ValueError, match="both groups"):
        M.ood_auroc([], [0.3])


def test_selection_accepts_masks_and_rejects_bad_indices():
    mask = np.zeros(10, dtype=bool)
    mask[[0, 1, 7]] = True
    assert M.selection_scores(mask, [0, 1, 2], 10) == M.selection_scores([0, 1, 7], [0, 1, 2], 10)
    with pytest.raises(ValueError, match=r"outside 0..9"):
        M.selection_scores([3, 12], [0], 10)


def test_grouped_conv_flops_and_per_layer_table():
    conv = nn.Conv2d(4, 6, 3, groups=2)  # 5×5 → 6×3×3 outputs, each 2·3·3 multiply-adds
    assert M.count_flops(conv, (4, 5, 5)) == 2 * (6 * 3 * 3) * (2 * 3 * 3)
    model = bp.lenet5_caffe()
    plain = bp.to_deterministic(model)
    size = M.model_size(model, (1, 28, 28))
    assert size.flops == M.count_flops(plain, (1, 28, 28))
    rows = M.layer_sizes(model, (1, 28, 28))
    assert [r.name for r in rows] == ["0", "3", "7", "9"]
    assert rows[0].flops == 2 * 20 * 24 * 24 * 25
    assert sum(r.flops for r in rows) == size.flops
    assert sum(r.weights for r in rows) == size.weights == M.model_size(plain).weights


def test_model_size_of_a_single_layer_and_of_batch_norm():
    layer = bp.nn.BayesLinear(3, 2)
    size = M.model_size(layer, (3,))
    assert (size.weights, size.parameters, size.flops) == (6, 16, 12)
    model = nn.Sequential(nn.Linear(3, 4, dtype=torch.float64), nn.BatchNorm1d(4)).double()
    model.train()
    before = model[1].running_mean.clone()
    size = M.model_size(model, (3,))
    assert size.weights == 12 and size.parameters == 16 + 8
    assert size.bytes == 4 * (16 + 8 + 8)  # + running mean and variance
    assert torch.equal(model[1].running_mean, before) and model.training
    with pytest.raises(ValueError, match="ONE example"):
        M.model_size(model, (1, 3))


class _MomentLinear(bp.nn.VariationalLayer):
    """A minimal moment-style layer: returns (mean, variance) instead of a tensor."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight_mu = nn.Parameter(torch.randn(n_out, n_in))

    def posterior(self):
        return bp.nn.Posterior(self.weight_mu.detach(), torch.zeros_like(self.weight_mu))

    def forward(self, x):
        mean = x[0] if isinstance(x, tuple) else x
        return mean @ self.weight_mu.T, torch.ones(len(mean), self.weight_mu.shape[0])


def test_model_size_reads_layers_that_return_moments():
    model = nn.Sequential(_MomentLinear(3, 4), _MomentLinear(4, 2))
    with torch.no_grad():
        model[1].weight_mu[0] = 0.0
    size = M.model_size(model, (3,))
    assert size.flops == 2 * (3 * 4 + 4 * 2)
    assert (size.weights, size.nonzero_weights, size.bytes) == (20, 16, 4 * 20)


def test_layer_widths_and_dense_weight_count_of_an_mlp():
    model = bp.mlp(784, [300, 100], 10, family="sparse_vd")
    widths = M.layer_widths(nn.Sequential(nn.Flatten(), model))
    assert widths == (784, 300, 100, 10)
    assert M.dense_weight_count(widths) == 784 * 300 + 300 * 100 + 100 * 10
    assert M.dense_weight_count(widths) == M.model_size(model).weights
    assert M.dense_weight_count((311, 86, 14, 10)) == 28_090  # 311·86 + 86·14 + 14·10
    with pytest.raises(ValueError, match="no connection layer"):
        M.layer_widths(nn.ReLU())


def test_ece_floor_is_the_sampling_noise_of_a_calibrated_predictor():
    # one bin at confidence 0.9: a calibrated predictor's ECE on n rows is |mean of
    # Bernoulli(0.9) − 0.9|, whose expectation is about sqrt(0.09 / n) · sqrt(2 / π)
    probs = torch.tensor([[0.9, 0.1]]).repeat(4000, 1)
    floor = M.ece_floor(probs, draws=300, seed=1)
    assert floor.rows == 4000 and floor.n_bins == 15
    assert floor.mean == pytest.approx(math.sqrt(0.09 / 4000) * math.sqrt(2 / math.pi), rel=0.15)
    assert floor.mean < floor.upper
    # four times the rows, half the floor
    bigger = M.ece_floor(probs.repeat(4, 1), draws=300, seed=1)
    assert bigger.mean == pytest.approx(floor.mean / 2, rel=0.2)
    # a miscalibrated predictor (90 % confident, 70 % right) is far above it; a calibrated
    # one (labels drawn from its probabilities) is not
    labels = (torch.arange(4000) % 10 >= 7).long()
    assert floor.resolves(M.ece(probs, labels))
    drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(2)).squeeze(-1)
    assert not floor.resolves(M.ece(probs, drawn))
    with pytest.raises(ValueError, match="shape"):
        M.ece_floor(torch.ones(3))


def test_ece_floor_equals_ece_of_labels_drawn_from_the_predictive():
    # the floor draws correctness per row; drawing whole labels and measuring `ece` on
    # them must give the same distribution (many bins in use, 10 classes)
    probs = torch.softmax(3 * torch.randn(3000, 10, generator=torch.Generator().manual_seed(0)), -1)
    floor = M.ece_floor(probs, draws=400, seed=0)
    g = torch.Generator().manual_seed(1)
    drawn = torch.tensor(
        [M.ece(probs, torch.multinomial(probs, 1, generator=g).squeeze(-1)) for _ in range(400)]
    )
    assert floor.mean == pytest.approx(float(drawn.mean()), rel=0.06)
    assert floor.upper == pytest.approx(float(drawn.quantile(0.95)), rel=0.12)
