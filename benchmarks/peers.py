"""bayesprune against the peer libraries: step cost, peak memory, time to accuracy.

Three measurements, as a user comparing libraries would make them:

1. Step timing (LeNet-300-100 and LeNet-5-Caffe, batch 128 and 1024): one
   optimiser step (forward, KL, backward, update) of every contender, the contenders'
   steps interleaved round-robin in one process, so that load from other processes
   hits all alike; median milliseconds per step and its ratio to the deterministic
   twin (plain torch, `torch.optim.Adam`). One Monte-Carlo sample per step for
   everyone. Every contender steps through the same sequence of MNIST training
   batches (`--step-data mnist`, the default): a single fixed batch of noise images
   with random labels (`--step-data noise`, the runs before 2026-12) is memorised
   within a few dozen steps, and the extreme logits then put denormal numbers into the
   convolutions' backward, a value-dependent cost that real training does not pay.
   Ours use the optimiser `bayesprune.fit` builds (torch's fused Adam); a second
   deterministic row with fused Adam shows what the optimiser alone is worth.
2. Peak memory of each contender's training step: the bytes glibc's allocator has in
   use, sampled after every tensor operation while the contender is built and takes 5
   steps, minus those in use before (MiB): parameters, optimiser state, activations,
   gradients, the autograd graph (`peak_memory`). On CUDA,
   `torch.cuda.max_memory_allocated`.
3. Time to accuracy (LeNet-300-100, MNIST): wall time of training steps until the
   validation accuracy (6,000 images carved from the training set by a seeded
   permutation; the test set is never read) first reaches each target. Every contender
   trains with its library's recommended settings (`recipes`, with the file each
   comes from) and ours with `fit`'s defaults; the contenders' steps are interleaved
   as above and each contender's clock counts only its own steps. Validation uses the
   posterior-mean network of every library (the mean weights in plain torch layers),
   every `--eval-every` steps of that contender, and is not timed.

Peers are imported here only (`pip install -e ".[bench]"`); the package never imports
them. `--before REV` adds bayesprune at a git revision (extracted with `git archive`,
imported as a second package) to the step timing, for before / after ratios in one run.

glibc's allocator returns freed pages to the kernel and maps fresh ones for large
tensors; in a virtual machine each page fault can cost tens of microseconds, and which
steps pay it depends on every contender's allocations in the process. `--allocator
retain` (the default) asks glibc (mallopt) to keep freed memory, as jemalloc / tcmalloc
do and as PyTorch's CPU performance guide recommends; `--allocator system` leaves
glibc's defaults. The result files say which.

    python benchmarks/peers.py                       # everything, 1 thread
    python benchmarks/peers.py --skip-accuracy --before 41eb47d
    python benchmarks/peers.py --threads 0           # all cores
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import gc
import importlib
import inspect
import io
import itertools
import json
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    add_results_dir_option,
    lr_multiplier_item,
    machine,
    md_table,
    results_dir,
    this_command,
    use_results_dir,
    write_results,
)
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import bayesprune as bp
from bayesprune.data import load_mnist
from bayesprune.nn.layout import hook_channels_last, use_channels_last
from bayesprune.optim import (
    declared_multipliers,
    make_optimizer,
    param_groups,
    resolve_schedule,
)

ARCHS = {"lenet300": bp.lenet_300_100, "lenet5": bp.lenet5_caffe}
MIXTURE = {"kind": "scale_mixture", "pi": 0.5, "scale1": 1.0, "scale2": math.exp(-6)}
"""The accuracy configuration of record (benchmarks/foundation_lenet300.py, docs/design.md)."""

# -- contenders -------------------------------------------------------------------------


@dataclass
class Contender:
    """One way of training: how to build its network, its loss and its optimiser."""

    name: str
    build: Callable[[str], nn.Module]  # arch → network
    loss: Callable[[nn.Module, Tensor, Tensor, int], Tensor]  # (net, x, y, N) → loss
    optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] = lambda net, lr: (
        torch.optim.Adam(net.parameters(), lr=lr)
    )
    mean_net: Callable[[nn.Module], nn.Module] | None = None  # posterior-mean twin
    note: str = ""


def _plain(arch: str) -> nn.Module:
    return ARCHS[arch](family="deterministic")


def _ce(net: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
    return F.cross_entropy(net(x), y)


def _replace_layers(net: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """`net` with every nn.Linear / nn.Conv2d child replaced by make(layer)."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.Linear | nn.Conv2d):
            setattr(net, name, make(child))
        else:
            _replace_layers(child, make)
    return net


def _mean_twin(net: nn.Module, weight_names: dict[str, tuple[str, str]]) -> nn.Module:
    """A plain copy of the Sequential `net` whose Bayesian layers hold their mean weights.

    `weight_names`: peer layer class name → (mean weight attribute, mean bias attribute).
    """

    def plain(layer: nn.Module) -> nn.Module:
        w_name, b_name = weight_names[type(layer).__name__]
        weight = getattr(layer, w_name).detach()
        bias = getattr(layer, b_name, None)
        bias = bias.detach() if isinstance(bias, Tensor) else None
        if weight.ndim == 2:
            out: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            out = nn.Conv2d(
                weight.shape[1] * layer.groups,
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
                bias=bias is not None,
            )
        with torch.no_grad():
            out.weight.copy_(weight)
            if bias is not None:
                out.bias.copy_(bias)
        return out

    # a Sequential of layers: peers keep sampled, non-leaf tensors on their layers, which
    # deepcopy refuses, so only the parameter-free modules are copied
    return nn.Sequential(
        *(plain(m) if type(m).__name__ in weight_names else copy.deepcopy(m) for m in net)
    )


def _fit_optimizer(
    net: nn.Module, lr: float, multipliers: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """The optimiser `bayesprune.fit` builds (fused Adam where torch has it), with fit's
    `lr_multipliers` groups over the layers' declared factors."""
    named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    groups = param_groups(named, lr, multipliers or {}, declared_multipliers(net))
    return make_optimizer("adam", groups, lr, 0.0)


def ours(
    name: str,
    lib: Any = bp,
    lr_multipliers: dict[str, float] | None = None,
    **layer_options: Any,
) -> Contender:
    """bayesprune (or a `--before` copy of it) with `layer_options`; loss = NLL + KL / N.
    bayesprune's convolutional networks train as `fit`'s default does (channels_last
    "auto": channels-last convolution outputs on CPU); `lr_multipliers` as fit's."""

    def loss(net: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
        return F.cross_entropy(net(x), y) + lib.kl(net) / n

    def mean_net(net: nn.Module) -> nn.Module:
        return lib.to_deterministic(net)

    optimizer = (
        functools.partial(_fit_optimizer, multipliers=lr_multipliers)
        if lib is bp
        else lambda net, lr: torch.optim.Adam(net.parameters(), lr=lr)
    )  # the loop Adam the revision's fit used

    def build(arch: str) -> nn.Module:
        net = getattr(lib, ARCHS[arch].__name__)(**layer_options)
        if lib is bp and use_channels_last(None, net, "cpu"):
            hook_channels_last(net)  # as fit's default trains it (a no-op on CUDA tensors)
        return net

    return Contender(
        name,
        build,
        loss,
        optimizer,
        mean_net,
        note=", ".join(f"{k}={v}" for k, v in layer_options.items()),
    )


def deterministic(fused: bool = False) -> Contender:
    return Contender(
        "deterministic (fused Adam)" if fused else "deterministic",
        _plain,
        _ce,
        (lambda net, lr: torch.optim.Adam(net.parameters(), lr=lr, fused=True))
        if fused
        else (lambda net, lr: torch.optim.Adam(net.parameters(), lr=lr)),
        lambda net: net,
    )


def torchbnn(prior_sigma: float = 0.1, kl_weight: float = 0.01) -> Contender:
    """torchbnn 1.2 as its README / demos use it: N(0, 0.1²) prior, CE + 0.01 · mean KL."""
    import torchbnn as tb

    def build(arch: str) -> nn.Module:
        def make(layer: nn.Module) -> nn.Module:
            if isinstance(layer, nn.Linear):
                return tb.BayesLinear(0.0, prior_sigma, layer.in_features, layer.out_features)
            return tb.BayesConv2d(
                0.0,
                prior_sigma,
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
            )

        return _replace_layers(_plain(arch), make)

    kl_loss = tb.BKLLoss(reduction="mean", last_layer_only=False)

    def loss(net: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
        return F.cross_entropy(net(x), y) + kl_weight * kl_loss(net)

    names = {"BayesLinear": ("weight_mu", "bias_mu"), "BayesConv2d": ("weight_mu", "bias_mu")}
    return Contender(
        "torchbnn 1.2",
        build,
        loss,
        mean_net=lambda net: _mean_twin(net, names),
        note=f"prior N(0, {prior_sigma}²), CE + {kl_weight} · BKLLoss(mean)",
    )


def bayesian_torch(kind: str) -> Contender:
    """bayesian-torch 0.5 through `dnn_to_bnn` with its README's prior; CE + KL / batch."""
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss

    params = {
        "prior_mu": 0.0,
        "prior_sigma": 1.0,
        "posterior_mu_init": 0.0,
        "posterior_rho_init": -3.0,
        "type": kind,
        "moped_enable": False,
        "moped_delta": 0.5,
    }

    def build(arch: str) -> nn.Module:
        net = _plain(arch)
        dnn_to_bnn(net, params)
        return net

    def loss(net: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
        return F.cross_entropy(net(x), y) + get_kl_loss(net) / len(x)

    names = {
        f"Linear{kind}": ("mu_weight", "mu_bias"),
        f"Conv2d{kind}": ("mu_kernel", "mu_bias"),
    }
    label = "reparameterisation" if kind == "Reparameterization" else "flipout"
    return Contender(
        f"bayesian-torch 0.5 {label}",
        build,
        loss,
        mean_net=lambda net: _mean_twin(net, names),
        note="dnn_to_bnn, prior N(0, 1), rho_init -3, CE + get_kl_loss / batch (README)",
    )


def blitz(samples: int = 1) -> Contender:
    """blitz 0.2.8 with its layers' default priors; `sample_elbo` with complexity 1 / N."""
    from blitz.modules import BayesianConv2d, BayesianLinear
    from blitz.utils import variational_estimator

    @variational_estimator
    class BlitzNet(nn.Sequential):
        pass

    def build(arch: str) -> nn.Module:
        def make(layer: nn.Module) -> nn.Module:
            if isinstance(layer, nn.Linear):
                return BayesianLinear(layer.in_features, layer.out_features)
            return BayesianConv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
            )

        return BlitzNet(*_replace_layers(_plain(arch), make))

    def loss(net: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
        return net.sample_elbo(x, y, F.cross_entropy, samples, complexity_cost_weight=1 / n)

    names = {"BayesianLinear": ("weight_mu", "bias_mu"), "BayesianConv2d": ("weight_mu", "bias_mu")}
    return Contender(
        "blitz 0.2.8" + (f" ({samples} samples)" if samples != 1 else ""),
        build,
        loss,
        mean_net=lambda net: _mean_twin(net, names),
        note=f"default priors, sample_elbo(sample_nbr={samples}, complexity 1/N)",
    )


def step_contenders(
    args: argparse.Namespace, before: Callable[[], Any] | None
) -> dict[str, Callable[[], Contender]]:
    """The step-timing contenders by name, built on demand (peers import only then)."""
    out: dict[str, Callable[[], Contender]] = {
        "deterministic": deterministic,
        "deterministic (fused Adam)": lambda: deterministic(fused=True),
    }

    def add(contender: Callable[..., Contender], name: str, *a: Any, **kw: Any) -> None:
        out[name] = lambda: contender(name, *a, **kw)

    for estimator in args.estimators:
        add(ours, f"bayesprune N(0,1) {estimator}", estimator=estimator)
        for kl in args.mixture_kls:
            name = f"bayesprune mixture {estimator} kl={kl}"
            add(ours, name, prior={**MIXTURE, "kl": kl}, estimator=estimator)
    if before is not None:
        rev = args.before
        out[f"bayesprune@{rev} N(0,1)"] = lambda: ours(f"bayesprune@{rev} N(0,1)", before())
        out[f"bayesprune@{rev} mixture"] = lambda: ours(
            f"bayesprune@{rev} mixture", before(), prior=MIXTURE
        )
    if not args.no_peers:
        out["torchbnn 1.2"] = torchbnn
        out["bayesian-torch 0.5 reparameterisation"] = lambda: bayesian_torch("Reparameterization")
        out["bayesian-torch 0.5 flipout"] = lambda: bayesian_torch("Flipout")
        out["blitz 0.2.8"] = blitz
    return out


# -- recommended training settings (time to accuracy) --------------------------------


@dataclass
class Recipe:
    """A contender with the batch size, optimiser and schedule its library recommends."""

    contender: Contender
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "constant"  # or "cosine" over `epochs` (as fit does)
    source: str = ""
    epochs: int | None = None  # the run's length (None: --max-epochs), the cosine's horizon


FIT_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(bp.fit).parameters.items()
    if name in ("epochs", "batch_size", "lr", "lr_schedule")
}
"""What `bp.fit(model, train)` uses when the user passes nothing: our recipe."""


def recipes(args: argparse.Namespace) -> list[Recipe]:
    """Ours with `fit`'s defaults, peers with their READMEs' / MNIST examples' settings."""
    out = [Recipe(deterministic(), source="torch.optim.Adam(lr=1e-3), batch 128")]
    d = FIT_DEFAULTS
    schedule = resolve_schedule(d["lr_schedule"], bp.lenet_300_100())  # "auto": cosine here

    def at_fit_defaults(contender: Contender, epochs: int, source: str) -> Recipe:
        return Recipe(
            contender,
            batch_size=d["batch_size"],
            lr=d["lr"],
            schedule=schedule,
            epochs=epochs,
            source=source,
        )

    declared = "".join(
        f"{key} × {factor:.3g}, " for key, factor in bp.nn.BayesLinear.lr_multipliers.items()
    )  # the layers' own rates, e.g. σ at a third
    for estimator, epochs in itertools.product(args.estimators, args.our_epochs or [d["epochs"]]):
        suffix = "" if epochs == d["epochs"] else f", {epochs} epochs"
        contender = ours(f"bayesprune N(0,1) {estimator}{suffix}", estimator=estimator)
        source = (
            f"bp.lenet_300_100() + bp.fit defaults (Adam {d['lr']:g}, {declared}{schedule} "
            f"over {epochs} epochs, batch {d['batch_size']})"
        )
        out.append(at_fit_defaults(contender, epochs, source))
    for estimator, (key, factor) in itertools.product(args.estimators, args.our_lr_multipliers):
        name = f"bayesprune N(0,1) {estimator}, {key}×{factor:g}"
        contender = ours(name, lr_multipliers={key: factor}, estimator=estimator)
        source = f"as the default, with fit(lr_multipliers={{{key!r}: {factor:g}}})"
        out.append(at_fit_defaults(contender, d["epochs"], source))
    out.append(
        Recipe(
            ours("bayesprune mixture, cosine", prior=MIXTURE),
            schedule="cosine",
            source="the accuracy configuration: scale mixture, cosine over the max epochs",
        )
    )
    if not args.no_peers:
        out += [
            Recipe(
                torchbnn(),
                lr=0.01,
                source="torchbnn README / demos: prior_sigma 0.1, kl_weight 0.01, Adam 0.01",
            ),
            Recipe(
                bayesian_torch("Reparameterization"),
                source="bayesian-torch README (dnn_to_bnn, loss CE + KL / batch), Adam 1e-3",
            ),
            Recipe(bayesian_torch("Flipout"), source="as above, type Flipout"),
            Recipe(
                blitz(samples=3),
                batch_size=64,
                source="blitz examples/bayesian_LeNet_mnist.py: batch 64, Adam 1e-3, "
                "sample_nbr 3, complexity 1/N",
            ),
        ]
    return out


# -- machinery --------------------------------------------------------------------------


def use_allocator(mode: str) -> None:
    """`retain`: glibc keeps freed memory (no trim, no fresh mmap per large tensor)."""
    if mode != "retain":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest allowed threshold
    libc.mallopt(m_trim_threshold, 2**30)


@functools.cache
def load_revision(rev: str) -> Any:
    """bayesprune at git revision `rev`, imported as the package `bayesprune_before`."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "src/bayesprune"],
        check=True,
        capture_output=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="bayesprune_before_"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "src" / "bayesprune").rename(folder / "bayesprune_before")
    sys.path.insert(0, str(folder))
    return importlib.import_module("bayesprune_before")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = {"cpu": time.thread_time, "wall": time.perf_counter}
"""The step clock: this thread's CPU time (`--clock cpu`, at one torch thread: what the
step costs, whatever else the machine runs) or wall time (`wall`: several threads, CUDA)."""


class Trainer:
    """A contender's network and optimiser, one step at a time, on its own clocks."""

    def __init__(
        self, contender: Contender, arch: str, lr: float, device: torch.device, clock: str
    ) -> None:
        self.contender = contender
        self.net = contender.build(arch).to(device)
        self.opt = contender.optimizer(self.net, lr)
        self.device = device
        self.clock = CLOCK[clock]
        self.seconds = 0.0  # on `clock`
        self.wall_seconds = 0.0

    def step(self, x: Tensor, y: Tensor, n: int) -> tuple[float, float]:
        """One optimiser step; its seconds on the chosen clock and on the wall clock."""
        _sync(self.device)
        start, wall = self.clock(), time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.contender.loss(self.net, x, y, n).backward()
        self.opt.step()
        _sync(self.device)
        took, took_wall = self.clock() - start, time.perf_counter() - wall
        self.seconds += took
        self.wall_seconds += took_wall
        return took, took_wall


def step_batches(
    step_data: str, batch_size: int, device: torch.device
) -> Callable[[int], tuple[Tensor, Tensor]]:
    """Step i's batch, the same for every contender: consecutive slices of a seeded
    permutation of MNIST's training images ("mnist"), or one fixed batch of uniform
    noise with random labels ("noise")."""
    g = torch.Generator().manual_seed(0)
    if step_data == "noise":
        x = torch.rand(batch_size, 1, 28, 28, generator=g).to(device)
        y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
        return lambda i: (x, y)
    images, labels = load_mnist("train").tensors
    order = torch.randperm(len(images), generator=g)
    per_epoch = len(images) // batch_size

    def batch(i: int) -> tuple[Tensor, Tensor]:
        idx = order[(i % per_epoch) * batch_size : (i % per_epoch + 1) * batch_size]
        return images[idx].to(device), labels[idx].to(device)

    return batch


def time_steps(
    contenders: list[Contender],
    arch: str,
    batch_size: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    clock: str,
    step_data: str = "mnist",
) -> list[dict[str, Any]]:
    """Median ms per step of each contender, steps interleaved; ratio to the first one."""
    batches = step_batches(step_data, batch_size, device)
    torch.manual_seed(0)
    trainers = [Trainer(c, arch, 1e-3, device, clock) for c in contenders]
    times: list[list[tuple[float, float]]] = [[] for _ in trainers]
    for i in range(warmup + repeats):
        x, y = batches(i)
        for t, trainer in zip(times, trainers, strict=True):
            took = trainer.step(x, y, 60_000)
            if i >= warmup:
                t.append(took)
    reference = [statistics.median(s[k] for s in times[0]) for k in (0, 1)]
    rows = []
    for trainer, t in zip(trainers, times, strict=True):
        median, wall = (statistics.median(s[k] for s in t) for k in (0, 1))
        quartiles = statistics.quantiles([s[0] for s in t], n=4)
        rows.append(
            {
                "contender": trainer.contender.name,
                "ms": 1e3 * median,
                "ratio": median / reference[0],
                "q25_ms": 1e3 * quartiles[0],
                "q75_ms": 1e3 * quartiles[2],
                "wall_ms": 1e3 * wall,
                "wall_ratio": wall / reference[1],
            }
        )
    return rows


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2 (2.33+), every field a size_t
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _heap_in_use() -> Callable[[], int] | None:
    """Bytes in use from glibc's allocator (heap + mapped blocks), or None without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


class _PeakAfterEachOp(TorchDispatchMode):
    """Samples the bytes in use after every tensor operation (forward, backward, update)."""

    def __init__(self, in_use: Callable[[], int]) -> None:
        super().__init__()
        self.in_use, self.peak = in_use, in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


def peak_memory(
    factory: Callable[[], Contender], arch: str, batch_size: int, device: torch.device
) -> float | None:
    """Peak MiB that building one contender and 5 of its training steps add.

    CPU: glibc's bytes in use (torch allocates CPU tensors with malloc), sampled after
    every operation, minus those in use before the model was built: parameters,
    optimiser state, activations, gradients and the autograd graph, not the
    temporaries freed inside one operation. CUDA: `torch.cuda.max_memory_allocated`.
    """
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        trainer = Trainer(factory(), arch, 1e-3, device, "wall")
        for _ in range(5):
            trainer.step(x, y, 60_000)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    in_use = _heap_in_use()
    if in_use is None:
        return None
    start = in_use()
    with _PeakAfterEachOp(in_use) as probe:
        trainer = Trainer(factory(), arch, 1e-3, device, "wall")
        for _ in range(5):
            trainer.step(x, y, 60_000)
    del trainer
    gc.collect()
    return (probe.peak - start) / 2**20


# -- time to accuracy -------------------------------------------------------------------


@dataclass
class Run:
    recipe: Recipe
    trainer: Trainer
    generator: torch.Generator
    order: Tensor | None = None
    position: int = 0
    epoch: int = -1
    steps: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    reached: dict[str, dict[str, float]] = field(default_factory=dict)
    done: bool = False
    noise_state: list[Tensor] = field(default_factory=list)  # see `_own_noise`


def _noise_state(device: torch.device) -> list[Tensor]:
    state = [torch.get_rng_state()]
    return [*state, torch.cuda.get_rng_state(device)] if device.type == "cuda" else state


@contextmanager
def _own_noise(run: Run, device: torch.device) -> Iterator[None]:
    """Within the block, torch's global generator (the layers' weight noise) is `run`'s
    own: each contender draws the same noise whichever others run beside it, so a
    split's result for one contender does not depend on the `--recipes` list."""
    torch.set_rng_state(run.noise_state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(run.noise_state[1], device)
    try:
        yield
    finally:
        run.noise_state = _noise_state(device)


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum(
            int((net(x[i : i + 2000]).argmax(-1) == y[i : i + 2000]).sum())
            for i in range(0, len(x), 2000)
        )
    return 100.0 * correct / len(x)


def _next_batch(run: Run, x: Tensor, y: Tensor, epochs: int) -> tuple[Tensor, Tensor]:
    """The next batch of `run`: a seeded permutation per epoch (last batch kept), and the
    epoch's learning rate when one starts."""
    if run.order is None or run.position >= len(x):
        run.order = torch.randperm(len(x), generator=run.generator).to(x.device)
        run.position, run.epoch = 0, run.epoch + 1
        if run.recipe.schedule == "cosine":  # as fit's schedule: a function of the epoch
            rate = 0.5 * run.recipe.lr * (1 + math.cos(math.pi * run.epoch / epochs))
            for group in run.trainer.opt.param_groups:
                group["lr"] = rate * group.get("lr_multiplier", 1.0)
    idx = run.order[run.position : run.position + run.recipe.batch_size]
    run.position += run.recipe.batch_size
    return x[idx], y[idx]


def _check_recipe_names(args: argparse.Namespace, available: list[Recipe]) -> None:
    """`--recipes` names that match no contender are an error, not a silent omission."""
    names = [r.contender.name for r in available]
    unknown = sorted(set(args.recipes or ()) - set(names))
    if unknown:
        raise SystemExit(f"--recipes: no contender named {unknown}; the contenders are {names}")


def _advance(
    run: Run,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    targets: list[float],
    args: argparse.Namespace,
) -> None:
    """One training step of `run`; at each evaluation point its validation accuracy, the
    targets it reached, and whether it is done."""
    n = len(train[1])
    steps_per_epoch = math.ceil(n / run.recipe.batch_size)
    epochs = min(run.recipe.epochs or args.max_epochs, args.max_epochs)
    run.trainer.step(*_next_batch(run, *train, epochs), n)
    run.steps += 1
    every = max(1, round(steps_per_epoch * args.eval_every))
    if run.steps % every and run.position < n:
        return
    mean_net = run.recipe.contender.mean_net(run.trainer.net)  # type: ignore[misc]
    acc = _accuracy(mean_net, *val)
    run.trainer.net.train()
    point = {
        "seconds": run.trainer.seconds,
        "wall_seconds": run.trainer.wall_seconds,
        "epochs": run.steps / steps_per_epoch,
        "val_accuracy": acc,
    }
    run.curve.append(point)
    for target in targets:
        if acc >= target and str(target) not in run.reached:
            run.reached[str(target)] = point
    if len(run.reached) == len(targets) or run.steps >= epochs * steps_per_epoch:
        run.done = True
        best = max(p["val_accuracy"] for p in run.curve)
        print(
            f"{run.recipe.contender.name}: done after {point['epochs']:.2f} epochs, "
            f"{run.trainer.seconds:.1f} s, best {best:.2f} %",
            flush=True,
        )


def time_to_accuracy(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    available = recipes(args)
    _check_recipe_names(args, available)  # before minutes of loading and training
    data = load_mnist("train")
    x_all, y_all = data.tensors
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(args.seed))
    val_idx, train_idx = perm[: args.val_size], perm[args.val_size :]
    x_val, y_val = x_all[val_idx].to(device), y_all[val_idx].to(device)
    x_tr, y_tr = x_all[train_idx].to(device), y_all[train_idx].to(device)
    runs = []
    for recipe in available:
        if args.recipes and recipe.contender.name not in args.recipes:
            continue
        torch.manual_seed(args.seed)
        trainer = Trainer(recipe.contender, "lenet300", recipe.lr, device, args.clock)
        run = Run(recipe, trainer, torch.Generator().manual_seed(args.seed))
        run.noise_state = _noise_state(device)  # its noise: the seed's, after its build
        runs.append(run)
    targets = sorted(args.targets, reverse=True)
    while not all(r.done for r in runs):
        for run in (r for r in runs if not r.done):
            with _own_noise(run, device):  # the step and any noise its evaluation draws
                _advance(run, (x_tr, y_tr), (x_val, y_val), targets, args)
    rows = []
    for run in runs:
        best = max(run.curve, key=lambda p: p["val_accuracy"])
        row: dict[str, Any] = {"contender": run.recipe.contender.name}
        for target in targets:
            hit = run.reached.get(str(target))
            row[f"s_to_{target}"] = None if hit is None else hit["seconds"]
            row[f"epochs_to_{target}"] = None if hit is None else hit["epochs"]
        row.update(
            best_val_accuracy=best["val_accuracy"],
            best_at_s=best["seconds"],
            ms_per_step=1e3 * run.trainer.seconds / run.steps,
            batch_size=run.recipe.batch_size,
            settings=run.recipe.source,
            curve=run.curve,
        )
        rows.append(row)
    return rows


# -- driver -----------------------------------------------------------------------------


def render(payload: dict[str, Any]) -> str:
    """The markdown of every section present; each section names its command and settings."""
    sections = payload["sections"]
    lines = []
    if "steps" in sections:
        steps = sections["steps"]
        memory = sections.get("memory", {}).get("results", {})
        lines.append(
            "## Step timing\n\nMedian ms per optimiser step (forward, KL, backward, update), "
            "contenders' steps interleaved in one process; ratio to the deterministic twin "
            f"(torch.optim.Adam); batches: {_step_data(steps)}; {_about(steps)}"
        )
        if memory:
            lines.append(
                "Peak MiB: bytes in use by the allocator, sampled after every operation while "
                "the contender is built and takes 5 steps, minus those in use before; "
                f"{_about(sections['memory'])}"
            )
        for arch, by_batch in steps["results"].items():
            names = [r["contender"] for r in next(iter(by_batch.values()))]
            rows = []
            for i, name in enumerate(names):
                row: dict[str, Any] = {"contender": name}
                for batch, results in by_batch.items():
                    row[f"b{batch} ms"] = results[i]["ms"]
                    row[f"b{batch} ratio"] = results[i]["ratio"]
                for batch, mem in memory.get(arch, {}).items():
                    value = mem.get(name)
                    row[f"b{batch} peak MiB"] = "n/a" if value is None else round(value, 1)
                rows.append(row)
            lines.append(f"### {arch}\n\n" + md_table(rows))
    if "accuracy" in sections:
        acc = sections["accuracy"]
        settings = acc["settings"]
        rows = []
        for r in acc["results"]:
            row = {"contender": r["contender"]}
            for t in sorted(settings["targets"], reverse=True):
                s = r[f"s_to_{t}"]
                row[f"s to {t} %"] = "not reached" if s is None else round(s, 1)
                e = r[f"epochs_to_{t}"]
                row[f"epochs to {t} %"] = "-" if e is None else round(e, 2)
            row.update(
                best_val_pct=r["best_val_accuracy"],
                ms_per_step=r["ms_per_step"],
                batch=r["batch_size"],
                settings=r["settings"],
            )
            rows.append(row)
        lines.append(
            "## Time to validation accuracy (LeNet-300-100, MNIST)\n\n"
            f"{settings['val_size']} validation images carved from the training set; at most "
            f"{settings['max_epochs']} epochs. Seconds of training steps (each contender's own "
            "clock, steps interleaved; evaluation not timed) until the posterior-mean network "
            f"first reaches the target, checked every {settings['eval_every']} epoch; "
            f"{_about(acc)}\n\n" + md_table(rows)
        )
    return "\n".join(lines)


def _step_data(section: dict[str, Any]) -> str:
    return {
        "mnist": "the same sequence of MNIST training batches for every contender",
        "noise": "one fixed batch of noise images with random labels",
    }[section["settings"].get("step_data", "noise")]


def _about(section: dict[str, Any]) -> str:
    settings = section["settings"]
    clock = {"cpu": "the thread's CPU time", "wall": "wall time"}[settings.get("clock", "wall")]
    return (
        f"clock: {clock}; allocator {settings['allocator']}, {section['threads']} torch "
        f"thread(s), device {settings['device']}. Command: `{section['command']}`\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: all cores")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=100, help="timed steps per contender")
    parser.add_argument(
        "--repeats-large", type=int, default=30, help="timed steps at batch sizes >= 1024"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--step-data",
        choices=["mnist", "noise"],
        default="mnist",
        help="step timing on MNIST training batches, or on one fixed noise batch (older runs)",
    )
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=["lrt", "shared", "flipout"],
        choices=bp.nn.GradientEstimator.values(),
    )
    parser.add_argument(
        "--mixture-kls", nargs="+", default=["bound"], choices=bp.nn.MixtureKL.values()
    )
    parser.add_argument("--before", metavar="REV", help="also time bayesprune at git REV")
    parser.add_argument("--no-peers", action="store_true", help="bayesprune only")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["steps", "memory", "accuracy"],
        default=["steps", "memory", "accuracy"],
        help="measure these sections; the others are kept from the existing result file",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="JSON",
        help="take the sections of these result files (measured elsewhere) into this one",
    )
    parser.add_argument("--targets", nargs="+", type=float, default=[98.0, 97.5])
    parser.add_argument(
        "--recipes", nargs="+", help="time to accuracy of these contenders only (exact names)"
    )
    parser.add_argument("--max-epochs", type=int, default=12)
    parser.add_argument(
        "--our-epochs",
        type=int,
        nargs="+",
        help="ours trained with fit(epochs=N) for each N, the cosine over N epochs "
        "(default: fit's default alone)",
    )
    parser.add_argument(
        "--our-lr-multipliers",
        type=lr_multiplier_item,
        nargs="*",
        default=[],
        metavar="SUFFIX=FACTOR",
        help="also ours at the defaults with fit(lr_multipliers={SUFFIX: FACTOR}), each",
    )
    parser.add_argument("--eval-every", type=float, default=0.25, help="in epochs")
    parser.add_argument("--val-size", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allocator", choices=["retain", "system"], default="retain")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=["auto", *CLOCK],
        default="auto",
        help="step clock; auto: thread CPU time at one thread on the CPU, else wall time",
    )
    parser.add_argument("--name", default="peers")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_allocator(args.allocator)
    torch.set_num_threads(args.threads if args.threads > 0 else torch.get_num_threads())
    use_results_dir(args)
    device = torch.device(args.device)
    if args.clock == "auto":
        args.clock = "cpu" if args.threads == 1 and device.type == "cpu" else "wall"
    before = (lambda: load_revision(args.before)) if args.before else None
    existing = results_dir() / f"{args.name}.json"
    sections = json.loads(existing.read_text())["sections"] if existing.exists() else {}
    for other in args.merge:
        sections.update(json.loads(Path(other).read_text())["sections"])
    settings = dict(vars(args))

    def section(results: Any) -> dict[str, Any]:
        return {
            "results": results,
            "settings": settings | {"mixture": MIXTURE},
            "threads": torch.get_num_threads(),
            "command": this_command(),
            "machine": machine(),
        }

    factories = step_contenders(args, before)
    if "steps" in args.only:
        contenders = [make() for make in factories.values()]
        found: dict[str, Any] = {}
        for arch in args.archs:
            found[arch] = {}
            for batch in args.batch_sizes:
                repeats = args.repeats_large if batch >= 1024 else args.repeats
                rows = time_steps(
                    contenders,
                    arch,
                    batch,
                    repeats,
                    args.warmup,
                    device,
                    args.clock,
                    args.step_data,
                )
                found[arch][str(batch)] = rows
                print(f"{arch} b{batch}\n" + md_table(rows), flush=True)
        sections["steps"] = section(found)
    if "memory" in args.only:
        found = {}
        for arch in args.archs:
            found[arch] = {}
            for batch in args.batch_sizes:
                peak_memory(deterministic, arch, batch, device)  # first-use buffers: not counted
                found[arch][str(batch)] = {
                    name: peak_memory(factory, arch, batch, device)
                    for name, factory in factories.items()
                }
        sections["memory"] = section(found)
    if "accuracy" in args.only:
        sections["accuracy"] = section(time_to_accuracy(args, device))
    payload = {"sections": sections}
    md = render(payload)
    print(md)
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
