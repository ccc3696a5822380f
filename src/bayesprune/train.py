"""`fit`: minimise the negative ELBO of a Bayesian network.

The loss convention, stated once
--------------------------------
For a data set of N examples the negative ELBO is

    Σ_i −log p(y_i | x_i, w)  +  KL(q ‖ p).

Per mini-batch of B examples we minimise that divided by N:

    loss = mean_batch NLL  +  kl_weight · warmup · KL / N

so the loss is "NLL per example" and the KL is spread over the data set; N is
`dataset_size` (default: the training set's length). `bayesprune.nn.kl` returns
the *sum* of every layer's KL, never a mean. `kl_weight` < 1 tempers the
posterior (a "cold" posterior), and `kl_warmup_epochs` ramps the KL term from 0
to 1 linearly over the first steps (Sønderby et al. 2016).

Data: a Dataset or an (X, y) pair is batched here (seeded, exactly resumable); a
DataLoader (or any re-iterable of (x, y) batches) is streamed as it comes, one pass
per epoch, with N = `len(loader.dataset)` unless `dataset_size` is given.
Stopping: `early_stopping` (patience), `restore_best` and callbacks that return
False or raise `StopTraining` (see `bayesprune.training_control`).

Data parallelism (several processes, `bayesprune.distributed`): `batch_size` stays
the global batch; each process adds the whole KL / N to the mean NLL of its share
and DDP averages the gradients, which is exactly the loss above (KL counted once).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import distributed as dp
from .checkpoint import TrainingState, resume_training, save_training_state
from .data.xy import DataLike, as_dataset, validation_data
from .evaluation import VALIDATION_METRICS, evaluate
from .inputs import to_device
from .io import save_tensors
from .kl_schedule import KLWeight, kl_stages
from .likelihoods import Likelihood, make_likelihood
from .nn import kl as model_kl
from .nn.layout import channels_last_convs, use_channels_last
from .optim import (
    LR_SCHEDULES,
    declared_multipliers,
    make_optimizer,
    param_groups,
    resolve_schedule,
)
from .train_checks import check_settings, check_targets, checked_inputs, non_finite, optimizer_step
from .train_data import (
    check_finite_batch,
    count_steps_per_epoch,
    iterate_batches,
    loader_batches,
    loader_of,
    loader_size,
)
from .training_control import (
    BEST_FILE,
    Callback,
    EpochBar,
    StopTraining,
    load_best,
    load_state,
    make_stopper,
    run_callbacks,
    state_of,
)
from .validation import (
    check_device,
    forward_checked,
    required_inputs,
    resolve_device,
)

__all__ = ["Callback", "DataLike", "History", "StopTraining", "as_dataset", "evaluate", "fit"]


@dataclass
class History:
    """Per-epoch records of a `fit` run, and the likelihood it trained."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    likelihood: Likelihood | None = None
    dataset_size: int = 0  # N of the KL scaling
    best_epoch: int | None = None  # by the monitored metric (early_stopping / restore_best)
    stopped_epoch: int | None = None  # set when early stopping or a callback ended training

    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}

    def column(self, key: str) -> list[Any]:
        return [record.get(key) for record in self.epochs]


@dataclass(frozen=True)
class _Settings:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    lr_schedule: str
    kl_weight: float | list[list[float | int]]  # KLStages.to_json: JSON in checkpoints
    kl_warmup_epochs: float
    dataset_size: int
    seed: int


class _Objective(nn.Module):
    """Model and likelihood as one module, so that DDP averages the gradients of both."""

    def __init__(self, model: nn.Module, likelihood: Likelihood) -> None:
        super().__init__()
        self.model = model
        self.likelihood = likelihood

    def forward(self, x: Tensor, y: Tensor, check_with: Dataset | None = None) -> Tensor:
        """Mean NLL of the batch; `check_with` first validates the labels against the output."""
        out = forward_checked(self.model, x)
        if check_with is not None:
            check_targets(self.likelihood, out, y, check_with)
        return self.likelihood.nll(out, y)


def _validate(
    model: nn.Module,
    val_set: Dataset,
    likelihood: Likelihood,
    ctx: dp.DistContext,
) -> dict[str, float]:
    """Validation metrics of the posterior-mean network over the whole set.

    With several processes each scores its shard; the shards' means, weighted by
    their sizes, add up to the whole set's (RMSE through its square).
    """
    names = VALIDATION_METRICS[likelihood.task]
    if not ctx.active:
        return evaluate(model, val_set, likelihood, mode="mean", metrics=names)
    part = dp.shard(val_set, ctx.rank, ctx.world_size)
    n = len(part)  # type: ignore[arg-type]
    mine = evaluate(model, part, likelihood, mode="mean", metrics=names) if n else {}
    sums = [n * mine.get(k, 0.0) ** (2 if k == "rmse" else 1) for k in names]
    *totals, count = ctx.all_reduce(torch.tensor([*sums, n], dtype=torch.float64)).tolist()
    means = [total / count for total in totals]
    return {k: math.sqrt(v) if k == "rmse" else v for k, v in zip(names, means, strict=True)}


def fit(
    model: nn.Module,
    train: DataLike | DataLoader | Iterable[Any],
    val: DataLike | DataLoader | None = None,
    *,
    likelihood: str | Likelihood = "categorical",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    lr_schedule: str = "auto",
    lr_multipliers: Mapping[str, float] | None = None,
    kl_weight: KLWeight = 1.0,
    kl_warmup_epochs: float = 0.0,
    dataset_size: int | None = None,
    regularizer: Callable[[nn.Module], Tensor] | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    keep_checkpoints: int = 2,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
    callbacks: Sequence[Callback] = (),
    distributed: bool | None = None,
    early_stopping: int | None = None,
    monitor: str | None = None,
    monitor_mode: str | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    channels_last: bool | None = None,
) -> History:
    """Train `model` by minimising the negative ELBO (see the module docstring).

    `lr_schedule` is "cosine" (per-epoch cosine decay from `lr` towards 0 over
    `epochs`; a pure function of the epoch, so resuming needs no scheduler state),
    "constant", or "auto": what the model's layers declare, cosine except for
    spike-and-slab layers, whose gates need a sustained rate to close. The defaults
    (Adam 3e-3, cosine) were chosen by time to 98 % MNIST validation accuracy
    (docs/speed.md): at a constant rate a Gaussian posterior's σ's grow after the
    accuracy peaks.
    `lr_multipliers` = {parameter-name suffix: factor} trains the matching parameters
    at `factor` × the scheduled rate, e.g. {"gate_logit": 10.0} for spike-and-slab gates.
    Layers declare their own factors, which these override: the Gaussian family's σ
    parameters ("_rho") train at a third of the rate (pass {"_rho": 1.0} for the full
    rate), which keeps the MC predictive calibrated at fit's rate (docs/speed.md).
    `kl_weight` is β for every epoch, or stages [(β, epochs), ...] in one call (the
    learning-rate schedule and Adam's state run on across them): [(4.0, 10), (1.0, 20)]
    is a tempered KL for 10 epochs, then the full KL (`bayesprune.kl_schedule`); the
    last β holds after the stages. The warm-up multiplies whichever β is current; each
    epoch's record has its `kl_weight`.
    Returns a `History`. With `checkpoint_dir`, a checkpoint is written after every
    epoch; `resume=True` continues from the newest one and, with the same seed,
    ends with exactly the parameters an uninterrupted run would have.
    The caller's global RNG state is left as it was.

    `distributed`: None trains data-parallel when a process group exists (or torchrun
    started this process); True requires one; False trains this process alone. Then
    `batch_size` is the global batch (divisible by the number of processes), only
    rank 0 writes checkpoints and shows progress, callbacks run on every process with
    the same (all-reduced) record. See `bayesprune.distributed` and docs/distributed.md.

    `device`: where the model trains ("cpu", "cuda", "cuda:1", ...; "auto" the GPU when
    torch sees one, else MPS, else the CPU). The model is moved there in place.

    `train` / `val`: a Dataset, an (X, y) pair, or a DataLoader (for `train` also any
    re-iterable of (x, y) batches, streamed once per epoch; N is `len(loader.dataset)`,
    else pass `dataset_size`). A loader shuffles with its own generator, so resuming
    it is exact only if that generator is seeded per epoch by the caller.

    Stopping (Lightning's EarlyStopping / ModelCheckpoint(monitor=...)):
    `early_stopping=P` stops after P epochs without improvement of `monitor` (default
    "val_nll" with `val`, else "loss"; any key of the epoch record, e.g.
    "val_accuracy"), by more than `min_delta`; its direction comes from the metric's
    name unless `monitor_mode` is "min" / "max". `restore_best=True` loads the best
    epoch's parameters at the end. A callback `f(record)` that returns False or
    raises `StopTraining` ends training after that epoch. The early-stopping state is
    rebuilt from the checkpointed history on resume (exact); the best state is kept
    in `checkpoint_dir/best.safetensors`. `History.best_epoch` / `stopped_epoch` say
    what happened. With several processes a callback must decide alike on every one.

    `channels_last`: train with the 2-d convolutions' CPU feature maps in channels-last
    memory order (cheaper convolutions and max pooling: LeNet-5-Caffe's step about
    0.88 ×, docs/speed.md). None ("auto") does so only where it is provably safe: an
    nn.Sequential, recursively, of the package's layers and standard layout-agnostic
    modules (activations, pooling, BatchNorm, Dropout, nn.Flatten) with a convolution,
    on the CPU; True forces it (a forward that calls `.view` on a feature map then
    fails). Only the activations change layout, and only during `fit`: parameters,
    optimiser state, checkpoints and later forward passes are as without it. Layers
    that draw noise per pre-activation (`lrt`, `flipout`, Sparse VD, spike-and-slab)
    then fill it in the channels-last memory order: an equally distributed draw, but
    not the same numbers as with `channels_last=False` under one seed.
    """
    check_settings(epochs, batch_size, lr, weight_decay, kl_warmup_epochs)
    kl_by_epoch = kl_stages(kl_weight, epochs)
    if dataset_size is not None and (
        isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1
    ):
        raise ValueError(f"dataset_size must be an integer >= 1 (or None), got {dataset_size!r}")
    lr_schedule = resolve_schedule(lr_schedule, model)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder of the run to resume")
    device = resolve_device(device)  # "auto": the accelerator torch has here, else the CPU
    check_device(device)
    ctx = dp.context(distributed, device)
    device = dp.device_for(device, ctx)
    convs_channels_last = use_channels_last(channels_last, model, device)
    dp.check_batch_size(batch_size, ctx.world_size)
    likelihood = make_likelihood(likelihood)
    stopper = (
        make_stopper(monitor, early_stopping, monitor_mode, min_delta, val is not None)
        if early_stopping is not None or restore_best
        else None
    )
    loader = loader_of(train)
    if loader is not None and ctx.active:
        raise ValueError(
            "data-parallel training shards the rows itself: pass a Dataset or (X, y), not a "
            "DataLoader"
        )
    inputs = required_inputs(model)
    train_set: Any = loader if loader is not None else as_dataset(train, "train", inputs)
    val_set: Any = None if val is None else validation_data(val, inputs)
    n_train = loader_size(loader, dataset_size) if loader is not None else len(train_set)
    if n_train == 0:
        raise ValueError(
            "the training set has 0 rows; give it at least one (with a run config: raise "
            "data.limit or lower data.val_fraction)"
        )
    if loader is None:
        train_set = checked_inputs(train_set, model, "train")
    val_set = None if val_set is None else checked_inputs(val_set, model, "val")
    settings = _Settings(
        epochs,
        batch_size,
        lr,
        optimizer,
        weight_decay,
        lr_schedule,
        kl_by_epoch.to_json(),
        kl_warmup_epochs,
        dataset_size or n_train,
        seed,
    )
    regularizer = regularizer or model_kl
    model.to(device)
    likelihood.to(device)
    named = [
        (name, p)
        for name, p in [
            *model.named_parameters(),
            *(("likelihood." + n, p) for n, p in likelihood.named_parameters()),
        ]
        if p.requires_grad
    ]
    groups = param_groups(named, lr, lr_multipliers or {}, declared_multipliers(model))
    opt = make_optimizer(optimizer, groups, lr, weight_decay)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    history = History(likelihood=likelihood, dataset_size=settings.dataset_size)
    show = (sys.stderr.isatty() if progress is None else progress) and ctx.is_main
    best: dict[str, Tensor] | None = None

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.noise_seed(seed))  # each process draws its own noise
        loader_rng = torch.Generator().manual_seed(seed)  # the same order on every process
        start_epoch = 0
        if resume and folder is not None:
            start_epoch, done = resume_training(
                folder, model, likelihood, opt, loader_rng, ctx, seed
            )
            history.epochs.extend(done)
        if stopper is not None:  # a pure function of the history: resumes exactly
            stopper.replay(history.epochs)
            if restore_best and stopper.best_epoch and folder is not None:
                best = load_best(folder, stopper.best_epoch)
        objective = ctx.wrap(_Objective(model, likelihood), torch.device(device))
        steps_per_epoch = count_steps_per_epoch(loader, n_train, batch_size, ctx, kl_warmup_epochs)
        warmup_steps = kl_warmup_epochs * steps_per_epoch
        finished = stopper is not None and stopper.should_stop  # stopped before the resume
        for epoch in range(start_epoch, epochs if not finished else start_epoch):
            for group in opt.param_groups:
                rate = LR_SCHEDULES[lr_schedule](lr, epoch, epochs)
                group["lr"] = rate * group.get("lr_multiplier", 1.0)
            bar = EpochBar(epoch, epochs, None if loader is not None else steps_per_epoch, show)
            with channels_last_convs(model, convs_channels_last):
                record = _train_epoch(
                    model,
                    likelihood,
                    opt,
                    train_set,
                    loader_rng,
                    settings,
                    regularizer,
                    epoch,
                    steps_per_epoch,
                    warmup_steps,
                    device,
                    bar,
                    objective=objective,
                    kl_weight=kl_by_epoch.at(epoch),
                    ctx=ctx,
                    labels_checked=epoch > start_epoch and isinstance(train_set, TensorDataset),
                )
                if val_set is not None:
                    scores = _validate(model, val_set, likelihood, ctx)
                    record.update({f"val_{k}": v for k, v in scores.items()})
            bar.close(record)
            ctx.raise_if_any(non_finite(named, epoch + 1))  # before anything is saved
            history.epochs.append(record)
            if folder is not None:
                # a collective: every process hands its RNG state to rank 0, which writes
                rngs = ctx.all_gather(torch.get_rng_state()) if ctx.active else None
                if ctx.is_main:
                    state = TrainingState(epoch + 1, history.epochs, asdict(settings))
                    save_training_state(
                        folder, model, likelihood, opt, loader_rng, state, keep_checkpoints, rngs
                    )
            if stopper is not None and stopper.update(record) and restore_best:
                best = state_of(model, likelihood)
                if folder is not None and ctx.is_main:
                    save_tensors(folder / BEST_FILE, best, {"epoch": stopper.best_epoch})
            if run_callbacks(callbacks, record) or (stopper is not None and stopper.should_stop):
                history.stopped_epoch = epoch + 1
                break
    if stopper is not None:
        history.best_epoch = stopper.best_epoch or None
    if restore_best and best is not None:
        load_state(model, likelihood, best)
    return history


def _train_epoch(
    model: nn.Module,
    likelihood: Likelihood,
    opt: torch.optim.Optimizer,
    train_set: Dataset,
    loader_rng: torch.Generator,
    settings: _Settings,
    regularizer: Callable[[nn.Module], Tensor],
    epoch: int,
    steps_per_epoch: int,
    warmup_steps: float,
    device: str | torch.device,
    bar: EpochBar,
    *,
    objective: nn.Module,
    kl_weight: float,
    ctx: dp.DistContext = dp.LOCAL,
    labels_checked: bool = False,
) -> dict[str, Any]:
    """One epoch at KL weight `kl_weight` (this epoch's β). `objective` (maybe DDP-wrapped)
    gives the NLL; the KL comes from `model`. Tensor data's labels are checked all at once
    with the first batch of a fit (`labels_checked` after that: on a small table, where an
    epoch is one step, checking them every epoch cost 2 % of the fit); other data's with
    every batch."""
    model.train()
    started = time.perf_counter()
    sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
    n_seen = 0
    streamed = not isinstance(train_set, Dataset)  # a DataLoader or other batch iterable
    batches = (
        loader_batches(train_set, model)
        if streamed
        else iterate_batches(train_set, settings.batch_size, loader_rng, shuffle=True, ctx=ctx)
    )
    checked = labels_checked
    for step, (x, y) in enumerate(batches):
        x, y = to_device(x, device), y.to(device)
        global_step = epoch * steps_per_epoch + step
        warm = 1.0 if warmup_steps <= 0 else min(1.0, (global_step + 1) / warmup_steps)
        problem: Exception | None = None
        try:
            if not isinstance(train_set, TensorDataset):
                check_finite_batch(x, global_step)
            nll = objective(x, y, None if checked else train_set)
            checked = checked or isinstance(train_set, TensorDataset)
            # on the unwrapped model, whole on every process: DDP's average keeps KL / N once
            kl = regularizer(model)
            loss = nll + kl_weight * warm * kl / settings.dataset_size
            if not torch.isfinite(loss):
                problem = FloatingPointError(
                    f"the loss became {float(loss)} at epoch {epoch + 1}, step {step}; lower the "
                    "learning rate or check the data scale. Earlier checkpoints are intact."
                )
        except ValueError as err:
            problem = err
        ctx.raise_if_any(problem)  # with several processes: all stop together, none hangs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(opt, epoch)
        b = len(y)
        n_seen += b
        loss_value = float(loss.detach())
        sums["loss"] += loss_value * b
        sums["nll"] += float(nll.detach()) * b
        sums["kl"] += float(kl.detach()) * b
        bar.step(loss_value)
    if ctx.active:  # shares are equal, so summing share-weighted means gives the global ones
        totals = ctx.all_reduce(torch.tensor([*sums.values(), n_seen], dtype=torch.float64))
        sums, n_seen = dict(zip(sums, totals[:-1].tolist(), strict=True)), int(totals[-1])
    record = {k: v / max(n_seen, 1) for k, v in sums.items()}
    if ctx.active:
        record["world_size"] = ctx.world_size
    record.update(
        epoch=epoch + 1,
        lr=opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_multiplier", 1.0),
        kl_weight=kl_weight * warm if n_seen else kl_weight,
        seconds=time.perf_counter() - started,
    )
    return record
