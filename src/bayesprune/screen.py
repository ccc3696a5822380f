"""Evidence screen: find the features that spike-and-slab gates cannot see.

A gate learns from the gradient of the likelihood. A feature that acts only through
an interaction with no main effect (x1 in Bai et al.'s 7·x2/(1 + x1²): the effect is
even in x1) has an expected gradient of exactly zero while its weights are small, so
its gate closes together with the noise inputs' before the network can learn what
it does (measured in docs/spike_slab.md). Started from the true support, the same
network keeps it: the search misses it, not the posterior.

The screen asks the question the gates cannot: for every excluded feature c, is the
variational evidence of a network on S ∪ {c} higher than that of the same network on
the selected features S? All candidate networks (mean-field Gaussian MLPs) are
trained at once as one batched network (`screen_batched`: every member's parameters
in one stacked tensor, each layer one batched matrix product), and the comparison is
paired: every member starts from the same weights, sees the same
mini-batches and the same noise draws, and the baseline S is the member whose extra
input column is zero (its extra weights sit at the prior, KL 0). The gain of c is
ELBO(S ∪ {c}) − ELBO(S) in nats: each ELBO bounds its log evidence from below, so
the gain estimates the log Bayes factor of adding c.

Gains of null candidates are not centred at 0: each candidate changes the path of
training, and a noise column buys some overfitting. With few true features among
many candidates the candidates' own gains estimate that null distribution (Efron's
empirical null, median and 1.4826 · MAD). Two stages:

1. screen: one paired run over every candidate; the shortlist is the candidates whose
   gain is above the prior odds against a feature, log((1 − λ)/λ), and an outlier of
   the null at a Bonferroni-corrected level, z > Φ⁻¹(1 − α / #candidates);
2. confirm out of sample: the shortlist and `decoys` random non-shortlisted candidates
   (the null of this stage) are trained on all but one of `confirm_folds` folds (the
   folds' networks as groups of one batched run) and scored by the log predictive
   density of the held-out fold, summed over the folds (a cross-fitted,
   prequential-style evidence). A candidate is added when its held-out gain exceeds
   the prior odds and exceeds max(0, the decoys' median) by more than
   Φ⁻¹(1 − α / #shortlist) times the decoys' robust spread. In-sample gains carry the
   winner's curse: among a thousand noise columns some correlate with the residual by
   chance, and retraining on the same rows confirms the chance (it did on the
   correlated design); held-out rows do not.

Narrowing (`screen_batched.Narrowing`, by default in the second and later rounds and
when there are more than 2 · (keep + null) candidates, e.g. p = 1000): stage 1's cost is
steps × candidates, and nearly all candidates are noise whose gains only feed the null.
A tenth of the way through the steps every candidate's ELBO gain is measured (its own
noise stream: training is not disturbed); the `keep` = 50 highest and `null` = 150
drawn at random train on, the rest stop (gain NaN). A member that trains on ends where
it ends in the full run (the members are independent; tests/test_screen_narrowing.py
checks it to float rounding), so only two things can change a decision: (1) a feature
not in the top 50 at the cut (and not drawn) is never shortlisted; (2) the null's
median and spread come from 150 random candidates instead of all: over 20 samples of
200 a true feature's z moved by 5-11 % (sd, development seeds), so a candidate within
about a tenth of the critical z can land on either side (stage 2 still decides).
On (1), measured, not proven (development seeds 10 and 11 of both designs,
benchmarks/results/screen_trajectory_*_dev.md): the feature a later round exists for,
x4 once x3 is in, ranked first from a tenth of the way on. Round one is exact by
default because there the margin is not there: the features the gates miss can leave
the null late (x3 on correlated seed 11 ranked 470th a tenth of the way in, 35th a
fifth, 2nd a quarter), and with every round narrowed at a quarter of the way (top
100 + 200) x1 on Bai seed 0, whose even effect keeps its weights at a saddle until
noise breaks it, was missed: it ranked 714th a quarter of the way in, 179th half way
and first only three quarters of the way (benchmarks/README.md).
A feature that needs an added one and leaves the null late would be missed the same
way in a later round. `Narrowing(first_round=1)` narrows every round; `narrowing=None`
none (the exact path).

Rounds: a later round starts from S plus what the earlier ones added, so a feature
whose effect needs an added one (x4 once x3 is in, for sin(x3·x4)) can enter next.
A pair that acts only together and shows no gain for either alone is still out of
reach of add-one screening; the gates find those when the joint effect is large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data.xy import DataLike, as_xy
from .likelihoods import Gaussian, Likelihood, make_likelihood
from .nn import default_prior_inclusion
from .screen_batched import Narrowing, Training, paired_gains


@dataclass
class ScreenResult:
    """Evidence gains of the excluded features, and the ones the screen adds."""

    selected: list[int]
    candidates: list[int]
    gains: np.ndarray  # ELBO(S ∪ {c}) − ELBO(S) in nats, one per candidate (stage 1;
    # NaN: stopped early by the narrowing)
    z: np.ndarray  # robust z-score of each gain against the candidates' median / MAD
    shortlist: list[int]  # candidates that passed stage 1
    confirm_gains: np.ndarray  # stage 2: held-out log predictive gain of each shortlisted one
    confirm_z: np.ndarray  # ... minus max(0, decoys' median), over the decoys' spread
    decoys: list[int]  # non-shortlisted candidates run through stage 2 as its null
    decoy_gains: np.ndarray
    added: list[int]
    min_gain: float  # log prior odds against a feature
    z_critical: float
    null_median: float
    null_scale: float
    rounds: list[list[int]] = field(default_factory=list)  # features added per round

    @property
    def features(self) -> list[int]:
        """The selected features and the added ones, in input order."""
        return sorted(self.selected + self.added)

    def as_dict(self) -> dict[str, Any]:
        order = np.argsort(-np.nan_to_num(self.gains, nan=-np.inf))[:10]
        return {
            "selected": self.selected,
            "shortlist": self.shortlist,
            "confirm_gains": self.confirm_gains.tolist(),
            "confirm_z": self.confirm_z.tolist(),
            "decoys": self.decoys,
            "decoy_gains": self.decoy_gains.tolist(),
            "added": self.added,
            "rounds": self.rounds,
            "features": self.features,
            "min_gain": self.min_gain,
            "z_critical": self.z_critical,
            "null_median": self.null_median,
            "null_scale": self.null_scale,
            "top": [
                {
                    "feature": self.candidates[i],
                    "gain": float(self.gains[i]),
                    "z": float(self.z[i]),
                }
                for i in order
            ],
        }


def _check_features(selected: Sequence[int], candidates: Sequence[int], p: int) -> None:
    for name, values in (("selected", selected), ("candidates", candidates)):
        bad = [int(i) for i in values if not 0 <= int(i) < p]
        if bad:
            raise ValueError(f"{name} features {bad} are out of range for {p} input columns")
    both = sorted(set(map(int, selected)) & set(map(int, candidates)))
    if both:
        raise ValueError(f"features {both} are both selected and candidates; list each once")
    if not candidates:
        raise ValueError("no candidate features to screen: pass candidates or leave some out")


def _null_statistics(gains: np.ndarray) -> tuple[float, float]:
    """Median and robust sd (1.4826 · MAD) of the gains: the empirical null."""
    median = float(np.median(gains))
    scale = 1.4826 * float(np.median(np.abs(gains - median)))
    return median, max(scale, 1e-8)


def screen_features(
    train: DataLike,
    selected: Sequence[int],
    candidates: Sequence[int] | None = None,
    *,
    likelihood: str | Likelihood = "gaussian",
    hidden: Sequence[int] = (7, 7, 7),
    activation: str = "relu",
    epochs: int = 150,
    min_steps: int = 1500,
    lr: float = 1e-2,
    batch_size: int = 128,
    prior_inclusion: float | None = None,
    alpha: float = 0.05,
    mc_samples: int = 8,
    confirm_folds: int = 3,
    decoys: int = 30,
    rounds: int = 2,
    narrowing: Narrowing | None = Narrowing(),  # noqa: B008 (frozen: shared safely)
    seed: int = 0,
) -> ScreenResult:
    """Paired variational Bayes factors of S ∪ {c} against S for every candidate c.

    `train` is tabular (x of shape (n, p), y). `candidates` defaults to every feature
    not in `selected`. `prior_inclusion` is λ of one feature (default 1 / (p + 1), the
    spike-and-slab input gates' default). Every candidate network trains `epochs`
    epochs, more on small data to reach `min_steps` optimiser steps. See the module
    doc for the two-stage rule.
    Up to `rounds` rounds: each later one starts from S plus what was added so far and
    screens the rest (stops when a round adds nothing). The gains, shortlist and decoys
    recorded are the first round's; `rounds` lists what each round added.
    `narrowing` stops stage 1's hopeless candidates early when there are many (more than
    2 · (keep + null)); their gains and z are NaN. None: every candidate trains to the
    end (the exact path). See `Narrowing` and the module doc.
    """
    x, y = as_xy(train, "train")
    if x.ndim != 2:
        raise ValueError("screen_features needs tabular data: x of shape (n, p) and y")
    x = x.float()
    p = x.shape[1]
    selected = [int(i) for i in selected]
    if candidates is None:
        candidates = [i for i in range(p) if i not in set(selected)]
    candidates = [int(i) for i in candidates]
    _check_features(selected, candidates, p)
    settings = dict(
        epochs=epochs, batch_size=batch_size, mc_samples=mc_samples, rounds=rounds,
        confirm_folds=confirm_folds, decoys=decoys, lr=lr, alpha=alpha,
    )  # fmt: skip
    if (
        min(epochs, batch_size, mc_samples, rounds) < 1
        or min(confirm_folds, decoys) < 2
        or not (lr > 0 and 0 < alpha < 1)
    ):
        raise ValueError(
            "need epochs, batch_size, mc_samples, rounds >= 1, confirm_folds, decoys >= 2, lr > 0 "
            f"and 0 < alpha < 1; got {settings}"
        )
    lam = default_prior_inclusion(p) if prior_inclusion is None else float(prior_inclusion)
    if not 0 < lam < 1:
        raise ValueError(f"prior_inclusion must be in (0, 1), got {lam}")
    lik = make_likelihood(likelihood)
    how = Training(
        likelihood=lik,
        out_features=1 if isinstance(lik, Gaussian) else int(y.max()) + 1,
        hidden=tuple(hidden),
        activation=activation,
        epochs=epochs,
        min_steps=min_steps,
        lr=lr,
        batch_size=batch_size,
        mc_samples=mc_samples,
    )

    round_args = (how, lam, alpha, confirm_folds, decoys, narrowing)
    with torch.random.fork_rng(devices=[]):  # seeded here; the caller's RNG is left alone
        result = _one_round(x, y, selected, candidates, *round_args, seed, 1)
        result.rounds = [list(result.added)]
        while result.rounds[-1] and len(result.rounds) < rounds:
            rest = [c for c in candidates if c not in set(result.added)]
            if not rest:
                break
            start = sorted(selected + result.added)
            number = len(result.rounds) + 1
            later = _one_round(x, y, start, rest, *round_args, seed + 7919 * (number - 1), number)
            result.rounds.append(list(later.added))
            result.added = result.added + later.added
    return result


def _one_round(
    x: Tensor,
    y: Tensor,
    selected: list[int],
    candidates: list[int],
    how: Training,
    lam: float,
    alpha: float,
    confirm_folds: int,
    decoys: int,
    narrowing: Narrowing | None,
    seed: int,
    number: int,
) -> ScreenResult:
    """Round `number`: stage 1 over every candidate, stage 2 on its shortlist (see the
    module doc)."""
    if narrowing is not None and not narrowing.applies(len(candidates), number):
        narrowing = None
    gains = paired_gains(x, y, selected, candidates, how, [seed], narrowing=narrowing)
    gains = gains[0].numpy().astype(float)
    null = gains if narrowing is None else gains[narrowing.null_sample(len(candidates), seed)]
    median, null_scale = _null_statistics(null)
    z = (gains - median) / null_scale
    min_gain = math.log((1 - lam) / lam)
    z_critical = NormalDist().inv_cdf(1 - alpha / len(candidates))
    shortlist = [  # NaN (stopped early) fails both comparisons
        c for c, g, zc in zip(candidates, gains, z, strict=True) if g > min_gain and zc > z_critical
    ]

    # stage 2: cross-fitted held-out gains of the shortlist and of random decoys
    rest = [c for c in candidates if c not in set(shortlist)]
    picked = np.random.default_rng(seed).permutation(len(rest))[:decoys] if shortlist else []
    tested = shortlist + sorted(rest[int(i)] for i in picked)
    held_out = np.zeros(len(tested))
    if shortlist:
        n = len(x)
        fold = torch.empty(n, dtype=torch.long)
        fold[torch.randperm(n, generator=torch.Generator().manual_seed(seed))] = (
            torch.arange(n) % confirm_folds
        )
        seeds = [seed + 1000 * (k + 1) for k in range(confirm_folds)]
        masks = [fold == k for k in range(confirm_folds)]  # the folds: groups of one run
        per_fold = paired_gains(x, y, selected, tested, how, seeds, masks)
        for k in range(confirm_folds):  # summed in fold order, as before
            held_out += per_fold[k].numpy().astype(float)
    confirm, decoy = held_out[: len(shortlist)], held_out[len(shortlist) :]
    decoy_median, decoy_scale = _null_statistics(decoy) if len(decoy) > 1 else (0.0, math.inf)
    # a null feature's expected held-out gain is at most 0: centre there unless the
    # decoys sit higher, and take only their spread from them
    confirm_z = (confirm - max(decoy_median, 0.0)) / decoy_scale
    confirm_critical = NormalDist().inv_cdf(1 - alpha / max(len(shortlist), 1))
    passed = (confirm > min_gain) & (confirm_z > confirm_critical)
    return ScreenResult(
        selected=selected,
        candidates=candidates,
        gains=gains,
        z=z,
        shortlist=shortlist,
        confirm_gains=confirm,
        confirm_z=confirm_z,
        decoys=tested[len(shortlist) :],
        decoy_gains=decoy,
        added=[c for c, ok in zip(shortlist, passed, strict=True) if ok],
        min_gain=min_gain,
        z_critical=z_critical,
        null_median=median,
        null_scale=null_scale,
    )
