"""The screen's paired runs as batched matrix products over stacked parameters.

Every member of a paired run is the same mean-field Gaussian MLP on S ∪ {c}, with the
"shared" weight draw of `nn.gaussian` (one w = μ + σ·ε per mini-batch, ε the same for
every member of the run: the pairing). All members' parameters sit in one tensor
(`StackedMLP`); each layer is one batched matrix product, with units before rows
([members, units, rows]), and the first layer is S's columns (one product for all
members) plus the candidate's column (a rank-1 term per member, zero for the
baseline). This replaced `torch.func.vmap` over `functional_call` of a thousand module
copies (a deep copy per member, a batched-rule dispatch per operation, one Adam update
per parameter tensor): 2.6× less CPU per step at 1,000 candidates
(benchmarks/README.md, screen_speed). The confirmation stage's folds are groups of
one run: each group has its own rows, initialisation and noise stream, so it computes
what a run of its own computed (up to the order of floating-point sums).

Random numbers: a run seeded s initialises its template network (`models.mlp`) after
`torch.manual_seed(s)`, shuffles its rows with `torch.Generator().manual_seed(s)` and
draws ε from the global stream as it stands after the initialisation, layer by layer,
weight then bias, one draw per forward pass: the draws of the template's own layers
(and of vmap's randomness="same" before). tests/test_screen.py checks the batched
forward against each member's own layers and the gains against the algorithm run one
network at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .likelihoods import _STD_FLOOR, Gaussian, Likelihood
from .models import mlp
from .nn.gaussian import inverse_softplus


@dataclass(frozen=True)
class Training:
    """How every candidate network is trained and its evidence estimated."""

    likelihood: Likelihood
    out_features: int
    hidden: tuple[int, ...]
    activation: str
    epochs: int
    min_steps: int
    lr: float
    batch_size: int
    mc_samples: int


@dataclass(frozen=True)
class Narrowing:
    """Stage 1's shortcut: after a fraction `at` of the optimiser steps, only the `keep`
    candidates with the highest ELBO gains so far and `null` candidates drawn at random
    (whatever their gain: the sample the final empirical null is taken from) train on.

    A stopped member's remaining steps are skipped; every member that trains on follows
    exactly the path it follows in the full run (its own parameters and Adam moments,
    the same rows and noise: members are independent), so its final gain is the full
    run's (up to the order of floating-point sums). What can differ: a candidate ranked
    below `keep` at the cut and not drawn into the null sample is never shortlisted,
    and the null's median and spread come from `null` members instead of all.
    """

    at: float = 0.1
    keep: int = 50
    null: int = 150
    first_round: int = 2  # the screen's rounds it applies to: this one and the later ones

    def __post_init__(self) -> None:
        if not (0 < self.at < 1 and self.keep >= 1 and self.null >= 2 and self.first_round >= 1):
            raise ValueError(
                f"Narrowing needs 0 < at < 1, keep >= 1, null >= 2 and first_round >= 1; got {self}"
            )

    def applies(self, candidates: int, round_: int = 1) -> bool:
        """From `first_round` on, and only with many candidates (worth it, and a null
        sample much smaller than the field)."""
        return round_ >= self.first_round and candidates > 2 * (self.keep + self.null)

    def null_sample(self, candidates: int, seed: int) -> Tensor:
        """Sorted indices of the `null` candidates that train on whatever their gain."""
        order = torch.randperm(candidates, generator=torch.Generator().manual_seed(seed + 4099))
        return order[: self.null].sort().values

    def survivors(self, gains: Tensor, candidates: int, seed: int) -> Tensor:
        """Sorted indices of the candidates that train on: the top `keep` and the null sample."""
        top = torch.topk(torch.nan_to_num(gains, nan=-math.inf), min(self.keep, candidates)).indices
        on = torch.zeros(candidates, dtype=torch.bool)
        on[top] = True
        on[self.null_sample(candidates, seed)] = True
        return torch.nonzero(on).flatten()


@dataclass
class _Group:
    """One paired run inside a batched one: its rows, its seed and its noise stream."""

    train_rows: Tensor
    held_rows: Tensor | None
    order: torch.Generator  # shuffles the training rows
    noise: torch.Generator  # draws ε


class StackedMLP:
    """`groups` × `members` mean-field Gaussian MLPs in one flat parameter tensor.

    `flat` is [groups · members, 2P (+ 1)]: each member's P posterior means (layer by
    layer, weight then bias, each row-major), its P ρ (σ = softplus(ρ)), and the
    Gaussian likelihood's noise ρ when it is learned. One tensor makes the weight
    draw, the KL and the Adam step a handful of operations for the whole run instead
    of a handful per layer and parameter.
    """

    def __init__(
        self,
        templates: list[nn.Sequential],
        members: int,
        likelihood: Likelihood,
        prior_scale: float,
    ) -> None:
        self.groups, self.members = len(templates), members
        layers = [[m for m in t if hasattr(m, "weight_mu")] for t in templates]
        self.activations = [m for m in templates[0] if not hasattr(m, "weight_mu")]
        self.prior_scale = prior_scale
        self.shapes = [
            shape
            for layer in layers[0]
            for shape in (tuple(layer.weight_mu.shape), tuple(layer.bias_mu.shape))
        ]
        self.size = sum(math.prod(shape) for shape in self.shapes)

        def per_group(kind: str) -> Tensor:  # [groups, P]
            return torch.stack(
                [
                    torch.cat([getattr(m, f"{t}_{kind}").detach().flatten() for m in net
                               for t in ("weight", "bias")])
                    for net in layers
                ]
            )  # fmt: skip

        columns = [per_group("mu"), per_group("rho")]
        self.likelihood = likelihood
        self.learned_noise = False
        if isinstance(likelihood, Gaussian):
            self.fixed_noise_rho = likelihood.noise_rho.detach()
            if likelihood.noise_rho.requires_grad:
                columns.append(self.fixed_noise_rho.reshape(1, 1).expand(self.groups, 1))
                self.learned_noise = True
        start = torch.cat(columns, 1)
        flat = start.unsqueeze(1).expand(self.groups, members, start.shape[1])
        self.flat = flat.reshape(self.groups * members, -1).clone().requires_grad_()

    def baseline_at_prior(self) -> None:
        """The last member of every group: extra input weights at the prior (KL 0)."""
        out, extra = self.shapes[0][0], self.shapes[0][1]
        column = torch.arange(out) * extra + extra - 1  # the last input of layer 1
        last = torch.arange(self.groups) * self.members + self.members - 1
        with torch.no_grad():
            self.flat[last.unsqueeze(1), column] = 0.0
            rho = inverse_softplus(torch.tensor(self.prior_scale))
            self.flat[last.unsqueeze(1), column + self.size] = rho

    def keep(self, members: Tensor, optimizer: torch.optim.Adam) -> torch.optim.Adam:
        """Keep only `members` (indices within one group) with their Adam moments; the
        others stop training. Returns the optimiser of the narrowed tensor."""
        if self.groups != 1:
            raise ValueError("only a one-group run can be narrowed")
        state = optimizer.state[self.flat]
        with torch.no_grad():
            self.flat = self.flat[members].clone().requires_grad_()
        self.members = len(members)
        narrowed = torch.optim.Adam([self.flat], **optimizer.defaults)
        narrowed.state[self.flat] = {
            key: value.clone() if key == "step" else value[members].clone()
            for key, value in state.items()
        }
        return narrowed

    def draw(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(w = μ + σ·ε [groups · members, P], KL(q ‖ N(0, s²)) per member); ε: [groups, P]."""
        mu, rho = self.flat[:, : self.size], self.flat[:, self.size : 2 * self.size]
        sigma = F.softplus(rho)
        s = self.prior_scale
        kl = (
            (sigma.square() + mu.square()).sum(1) / (2 * s**2)
            - torch.log(sigma).sum(1)
            + self.size * (math.log(s) - 0.5)
        )
        g, m = self.groups, self.members
        w = torch.addcmul(mu.view(g, m, -1), sigma.view(g, m, -1), eps.unsqueeze(1))
        return w.view(g * m, -1), kl

    def layers(self, w: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Views of a weight draw [members, P]: (weight [members, out, in], bias [members, out])."""
        views, start = [], 0
        for shape in self.shapes:
            end = start + math.prod(shape)
            views.append(w[:, start:end].view(len(w), *shape))
            start = end
        return list(zip(views[::2], views[1::2], strict=True))

    def forward(self, x_s: Tensor, x_c: Tensor, w: Tensor) -> Tensor:
        """Outputs [groups · members, out, rows] under the weight draw w.

        x_s: S's columns of each group's rows [groups, |S|, rows]; x_c: each member's
        extra column [groups · members, 1, rows]. Units before rows (a member's batch
        is [units, rows]): each layer is one [out, in] × [in, rows] product per member,
        which `bmm` runs about twice as fast as [rows, in] × [in, out] at these sizes;
        S's part of the first layer is one matrix product per group for all its
        members, plus the candidate's rank-1 term.
        """
        (w1, b1), *rest = self.layers(w)
        g, units, k = self.groups, w1.shape[1], x_s.shape[1]
        h = b1.unsqueeze(2)  # no S: the bias alone, broadcast over the rows
        if k:
            h = torch.baddbmm(h.reshape(g, -1, 1), w1[:, :, :-1].reshape(g, -1, k), x_s)
        h = torch.addcmul(h.view(len(w1), units, -1), w1[:, :, -1:], x_c)
        for i, (wl, bl) in enumerate(rest):
            h = torch.baddbmm(bl.unsqueeze(2), wl, self.activations[i](h))
        return h

    def nll(self, out: Tensor, y: Tensor) -> Tensor:
        """Negative log likelihood [groups · members, rows] of targets y of the same shape."""
        if isinstance(self.likelihood, Gaussian):
            rho = self.flat[:, -1] if self.learned_noise else self.fixed_noise_rho
            var = (F.softplus(rho) + _STD_FLOOR).square().unsqueeze(-1)
            return 0.5 * (torch.log(2 * math.pi * var) + (y - out[:, 0]).square() / var)
        return F.cross_entropy(out, y, reduction="none")  # out: [members, classes, rows]


def _noise(model: StackedMLP, stream: torch.Generator) -> Tensor:
    """ε [P] from a group's noise stream, drawn layer by layer, weight then bias (the
    draws of the layers' own forward passes)."""
    return torch.cat([torch.randn(s, generator=stream).flatten() for s in model.shapes])


def paired_gains(
    x: Tensor,
    y: Tensor,
    selected: list[int],
    candidates: list[int],
    how: Training,
    seeds: list[int],
    held_out: list[Tensor] | None = None,
    narrowing: Narrowing | None = None,
) -> Tensor:
    """Gain of S ∪ {c} over S per run and candidate: [len(seeds), len(candidates)].

    One paired run per seed (all members trained at once). Without `held_out`: ELBO
    gains on all rows. With it (one boolean row mask per seed): run k trains on the
    rows outside mask k and scores the gain in log predictive density of its rows.
    Runs whose training sets have the same size (the same step schedule) train as
    groups of one batched run; uneven folds make two such runs. `narrowing` (one run on
    all rows): stop the hopeless candidates early (`Narrowing`); theirs are NaN.
    """
    if narrowing is not None and (len(seeds) != 1 or held_out is not None):
        raise ValueError("narrowing applies to one run on all rows (stage 1)")
    masks: list[Tensor | None] = list(held_out) if held_out is not None else [None] * len(seeds)
    sizes = [len(x) if m is None else int((~m).sum()) for m in masks]
    out = torch.empty(len(seeds), len(candidates))
    for size in dict.fromkeys(sizes):
        pick = [i for i, s in enumerate(sizes) if s == size]
        gains = _batched_run(
            x, y, selected, candidates, how, [seeds[i] for i in pick], [masks[i] for i in pick],
            narrowing,
        )  # fmt: skip
        out[pick] = gains
    return out


def _batched_run(
    x: Tensor,
    y: Tensor,
    selected: list[int],
    candidates: list[int],
    how: Training,
    seeds: list[int],
    masks: list[Tensor | None],
    narrowing: Narrowing | None = None,
    record: dict[int, Tensor] | None = None,
) -> Tensor:
    """[runs, candidates] gains of runs with equally many training rows, as groups.

    `narrowing` (one run on all rows only): see `Narrowing`; the candidates it stops
    get NaN. `record`, when given, is filled with {step: ELBO gains of every member
    still training at that optimiser step} for the steps already in it as keys
    (measured with their own noise stream, so training is unchanged).
    """
    templates, groups = [], []
    for seed, mask in zip(seeds, masks, strict=True):
        torch.manual_seed(seed)
        net = mlp(len(selected) + 1, how.hidden, how.out_features, activation=how.activation)
        noise = torch.Generator()
        noise.set_state(torch.get_rng_state())  # the global stream after initialisation
        templates.append(net)
        rows = torch.arange(len(x)) if mask is None else torch.nonzero(~mask).flatten()
        held = None if mask is None else torch.nonzero(mask).flatten()
        groups.append(_Group(rows, held, torch.Generator().manual_seed(seed), noise))
    if (narrowing is not None or record) and (len(groups) > 1 or groups[0].held_rows is not None):
        raise ValueError("narrowing and record apply to one run on all rows (stage 1)")
    first = next(m for m in templates[0] if hasattr(m, "weight_mu"))
    model = StackedMLP(templates, len(candidates) + 1, how.likelihood, first.prior.scale)
    model.baseline_at_prior()
    g, n = len(groups), len(groups[0].train_rows)
    training = torch.arange(len(candidates))  # the candidates still training, in order
    # the columns a run reads, gathered once (a mini-batch then copies only those):
    # S's, and every member's extra one, the baseline's a column of zeros
    x_s_all = x[:, selected]
    x_c_all = torch.cat([x[:, candidates], torch.zeros(len(x), 1)], 1)
    gaussian = isinstance(how.likelihood, Gaussian)

    def batch(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For rows [groups, b]: S's columns [groups, |S|, b], each member's extra column
        [groups · members, 1, b] and the targets [groups · members, b]."""
        m = model.members
        x_c = x_c_all[rows].transpose(1, 2).contiguous()  # [groups, members, b]
        target = y[rows].reshape(g, 1, -1).expand(g, m, rows.shape[1]).reshape(g * m, -1)
        x_s = x_s_all[rows].transpose(1, 2).contiguous()
        return x_s, x_c.view(g * m, 1, -1), target.float() if gaussian else target

    def nll(part: tuple[Tensor, Tensor, Tensor], w: Tensor) -> Tensor:
        x_s, x_c, target = part
        return model.nll(model.forward(x_s, x_c, w), target)

    def evaluate(noise: list[torch.Generator]) -> Tensor:
        """[groups, members − 1] gains: in ELBO on the training rows, or in log
        predictive density on the held-out rows; `mc_samples` draws from `noise`."""
        g, m = model.groups, model.members
        held = groups[0].held_rows is not None
        rows = torch.stack(
            [gr.train_rows if gr.held_rows is None else gr.held_rows for gr in groups]
        )
        parts = [batch(part) for part in rows.split(512, dim=1)]  # 512 rows at a time
        per_sample = []  # one weight draw per sample, for all members and rows
        for _ in range(how.mc_samples):
            w, kl = model.draw(torch.stack([_noise(model, stream) for stream in noise]))
            per_sample.append(torch.cat([nll(part, w) for part in parts], 1))
        if not held:  # −ELBO per member, averaged over the samples
            neg_elbo = torch.zeros(g * m)
            for sample in per_sample:
                neg_elbo += (sample.sum(-1) + kl) / how.mc_samples
            neg_elbo = neg_elbo.view(g, m)
            return neg_elbo[:, -1:] - neg_elbo[:, :-1]
        log_lik = -torch.stack(per_sample)  # (samples, members, rows)
        lpd = (torch.logsumexp(log_lik, 0) - math.log(how.mc_samples)).sum(-1).view(g, m)
        return lpd[:, :-1] - lpd[:, -1:]

    def as_row(gains: Tensor) -> Tensor:
        """Gains of the members still training, at their candidates' places (NaN elsewhere)."""
        row = torch.full((len(candidates),), math.nan)
        row[training] = gains[0]
        return row

    optimizer = torch.optim.Adam([model.flat], lr=how.lr, fused=True)  # one kernel per step
    # small data: at least `min_steps` optimiser steps, or the extra weights keep the
    # KL of their initial, tiny sigma and every gain is negative (wine: 2 steps / epoch)
    per_epoch = math.ceil(n / how.batch_size)
    epochs = max(how.epochs, math.ceil(how.min_steps / per_epoch))
    cut = -1 if narrowing is None else round(narrowing.at * epochs * per_epoch)
    step = 0
    for _ in range(epochs):
        perm = torch.stack([gr.train_rows[torch.randperm(n, generator=gr.order)] for gr in groups])
        for start in range(0, n, how.batch_size):
            if (record is not None and step in record) or step == cut:
                with torch.no_grad():  # a stream of its own: training's draws are unchanged
                    early = evaluate([torch.Generator().manual_seed(seeds[0] + 7 * step + 1)])
                if record is not None and step in record:
                    record[step] = as_row(early)
                if step == cut and narrowing is not None:
                    on = narrowing.survivors(early[0], len(candidates), seeds[0])
                    training = training[on]
                    on = torch.cat([on, torch.tensor([model.members - 1])])  # + baseline
                    x_c_all = x_c_all[:, on]
                    optimizer = model.keep(on, optimizer)
            w, kl = model.draw(torch.stack([_noise(model, gr.noise) for gr in groups]))
            loss = (nll(batch(perm[:, start : start + how.batch_size]), w).mean(-1) + kl / n).sum()
            optimizer.zero_grad()  # members are independent: the sum trains each
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        gains = evaluate([gr.noise for gr in groups])
    return gains if narrowing is None else as_row(gains).unsqueeze(0)
