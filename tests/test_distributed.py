"""Data-parallel fit (DDP, gloo, 2 CPU processes) against single-process brute force.

One `launch` runs every two-process scenario, because starting processes that import
torch costs several seconds on 2 cores; the tests marked slow check what it returned.
Each rank checkpoints into its own folder, as on machines without a shared disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import bayesprune as bp
import bayesprune.train as train_module
from bayesprune import distributed as dp
from bayesprune.checkpoint import list_checkpoints
from bayesprune.io import load_tensors

N_GRAD = 64  # one full batch for the gradient checks


def _blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _model(kind: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "deterministic":
        return bp.mlp(4, [8], 3, family="deterministic")
    model = bp.mlp(4, [8], 3, prior_scale=0.5)
    if kind == "bayes_mean":  # posterior-mean forward: no noise, the KL still counts
        for _, layer in bp.nn.variational_layers(model):
            layer.sample = False
    return model


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _digest(state: torch.Tensor) -> str:
    return hashlib.sha256(state.numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------
# what each of the two processes runs
# ------------------------------------------------------------------------------------
def _sgd_step_gradient(kind: str) -> list[float]:
    """fit() with SGD, lr 1 for every parameter (σ's declared third lifted), one full
    batch: the parameter change is minus the gradient."""
    model = _model(kind)
    before = _flat(model)
    x, y = _blobs(N_GRAD)
    every_rate_one = {"_rho": 1.0} if kind != "deterministic" else None
    bp.fit(
        model,
        (x, y),
        epochs=1,
        batch_size=N_GRAD,
        lr=1.0,
        optimizer="sgd",
        lr_multipliers=every_rate_one,
        progress=False,
    )
    return (before - _flat(model)).tolist()


def _learn() -> dict:
    model = _model("bayes")
    noise_states: list[str] = []
    model.register_forward_pre_hook(
        lambda *_: noise_states.append(_digest(torch.get_rng_state())) if not noise_states else None
    )
    x, y = _blobs(400)
    history = bp.fit(
        model,
        (x, y),
        _blobs(101, seed=1),
        epochs=8,
        batch_size=50,
        lr=1e-2,
        lr_schedule="constant",
        progress=False,
    )
    return {"history": history.epochs, "params": _flat(model).tolist(), "noise": noise_states[0]}


def _same_path_as_one_process() -> list[float]:
    model = _model("deterministic")
    bp.fit(model, _blobs(64), epochs=3, batch_size=16, lr=1e-2, progress=False, seed=4)
    return _flat(model).tolist()


class _Stop(Exception):
    pass


def _checkpoints(folder: Path) -> dict:
    saves = []
    original = train_module.save_training_state

    def counting(*args, **kwargs):
        saves.append(1)
        return original(*args, **kwargs)

    train_module.save_training_state = counting
    try:
        x, y = _blobs(200)
        kw = dict(epochs=4, batch_size=32, seed=11, progress=False)
        straight = _model("bayes", seed=3)
        bp.fit(straight, (x, y), checkpoint_dir=folder / "a", **kw)

        def stop_after_two(record):
            if record["epoch"] == 2:
                raise _Stop

        with pytest.raises(_Stop):
            bp.fit(
                _model("bayes", seed=3),
                (x, y),
                checkpoint_dir=folder / "b",
                callbacks=[stop_after_two],
                **kw,
            )
        resumed = _model("bayes", seed=99)  # every state must come from the checkpoint
        history = bp.fit(resumed, (x, y), checkpoint_dir=folder / "b", resume=True, **kw)
    finally:
        train_module.save_training_state = original
    same = all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())
    return {"saves": len(saves), "resumed_equal": same, "epochs": history.column("epoch")}


def _errors() -> dict:
    """Bad labels that only rank 1 sees: both processes must stop, neither may hang."""
    x, y = _blobs(40)
    first = next(dp.batch_indices(40, 8, torch.Generator().manual_seed(0), True, 1, 2))
    y[first] = 7

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    messages = {}
    with pytest.raises(ValueError) as info:
        bp.fit(_model("bayes"), Plain(), epochs=1, batch_size=8, progress=False)
    messages["labels"] = str(info.value)
    with pytest.raises(ValueError) as info:
        bp.fit(_model("bayes"), (x, y), epochs=1, batch_size=9, progress=False)
    messages["batch"] = str(info.value)
    return messages


def _cli_train(folder: Path) -> dict:
    """What `bayesprune train --nproc 2` runs in each process."""
    from bayesprune.cli_run import _train_process

    config = folder / f"config-{dist.get_rank()}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "data: {name: wine}\nmodel: {builder: mlp, kwargs: {hidden: [8]}}\n"
        "train: {epochs: 3, batch_size: 32, lr: 0.01}\n"
    )
    return {"test": _train_process(str(config), str(folder / "run"), quiet=True)}


def _all_scenarios(folder: str) -> dict:
    torch.set_num_threads(1)
    return {
        "cli": _cli_train(Path(folder) / "cli"),
        "rank": dist.get_rank(),
        "grad": {k: _sgd_step_gradient(k) for k in ("deterministic", "bayes_mean")},
        "learn": _learn(),
        "path": _same_path_as_one_process(),
        "ckpt": _checkpoints(Path(folder) / f"rank{dist.get_rank()}-view"),
        "errors": _errors(),
    }


# ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ddp")
    ranks = dp.launch(_all_scenarios, 2, str(folder), threads=1, timeout_s=120)
    return {"ranks": ranks, "folder": folder}


def _reference_gradient(kind: str, kl_factor: float) -> torch.Tensor:
    """Brute force: one process, the full batch, mean NLL + kl_factor · KL / N."""
    model = _model(kind)
    x, y = _blobs(N_GRAD)
    loss = F.cross_entropy(model(x), y) + kl_factor * bp.kl(model) / N_GRAD
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deterministic", "bayes_mean"])
def test_gradient_equals_single_process_full_batch(two, kind):
    right = _reference_gradient(kind, 1.0)
    for rank in two["ranks"]:
        got = torch.tensor(rank["grad"][kind])
        assert torch.allclose(got, right, atol=2e-6, rtol=1e-5), (got - right).abs().max()
    if kind == "bayes_mean":  # the check can tell KL counted once from twice or halved
        for wrong in (2.0, 0.5):
            assert (_reference_gradient(kind, wrong) - right).abs().max() > 1e-3


@pytest.mark.slow
def test_two_processes_follow_the_one_process_path(two):
    model = _model("deterministic")
    bp.fit(model, _blobs(64), epochs=3, batch_size=16, lr=1e-2, progress=False, seed=4)
    for rank in two["ranks"]:
        assert torch.allclose(torch.tensor(rank["path"]), _flat(model), atol=1e-5)


@pytest.mark.slow
def test_loss_falls_and_validation_is_over_the_whole_set(two):
    first, second = (rank["learn"] for rank in two["ranks"])
    losses = [r["loss"] for r in first["history"]]
    assert losses[-1] < losses[0]
    last = first["history"][-1]
    assert last["val_accuracy"] > 0.8 and last["world_size"] == 2
    for key in ("loss", "nll", "kl", "val_nll", "val_accuracy"):  # all-reduced: equal
        assert [r[key] for r in first["history"]] == [r[key] for r in second["history"]]
    assert first["params"] == second["params"]
    model = _model("bayes")  # the 101 validation examples, scored here in one process
    torch.nn.utils.vector_to_parameters(torch.tensor(first["params"]), model.parameters())
    here = bp.evaluate(model, _blobs(101, seed=1))
    assert last["val_accuracy"] == pytest.approx(here["accuracy"], abs=1e-12)
    assert last["val_nll"] == pytest.approx(here["nll"], rel=1e-5)


@pytest.mark.slow
def test_each_process_draws_its_own_noise(two):
    first, second = (rank["learn"]["noise"] for rank in two["ranks"])
    assert first != second
    with torch.random.fork_rng():
        torch.manual_seed(0)  # rank 0 keeps the seed a single process would use
        assert first == _digest(torch.get_rng_state())


@pytest.mark.slow
def test_rank_zero_writes_and_resume_reproduces_the_uninterrupted_run(two):
    for rank in two["ranks"]:  # rank 1 resumed from bytes broadcast by rank 0
        assert rank["ckpt"]["resumed_equal"] and rank["ckpt"]["epochs"] == [1, 2, 3, 4]
    saves = [rank["ckpt"]["saves"] for rank in two["ranks"]]
    assert saves == [4 + 2 + 2, 0]  # straight 4 epochs; 2, stop, resume 2 more
    for run in ("a", "b"):
        assert not list((two["folder"] / "rank1-view" / run).glob("*"))
        written = two["folder"] / "rank0-view" / run
        assert [p.name for p in written.iterdir()] == [p.name for p in list_checkpoints(written)]
    tensors, meta = load_tensors(list_checkpoints(two["folder"] / "rank0-view" / "b")[-1])
    states = tensors["rng.torch.ranks"]
    assert meta["world_size"] == 2 and states.shape[0] == 2 and not torch.equal(*states)


@pytest.mark.slow
def test_resume_a_two_process_run_in_one_process(two):
    folder = two["folder"] / "rank0-view" / "b"
    history = bp.fit(
        _model("bayes"),
        _blobs(200),
        epochs=5,
        batch_size=32,
        seed=11,
        checkpoint_dir=folder,
        resume=True,
        progress=False,
    )
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4, 5]
    assert "world_size" in history.epochs[0] and "world_size" not in history.epochs[-1]


@pytest.mark.slow
@pytest.mark.slow
def test_cli_train_writes_the_run_folder_once(two):
    first, second = (rank["cli"]["test"] for rank in two["ranks"])
    assert second is None and first["accuracy"] > 0.5  # 3 wine classes
    run = two["folder"] / "cli" / "run"
    assert (run / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "epoch-0002.safetensors",
        "epoch-0003.safetensors",
    ]
    assert (run / "log.txt").read_text().count("epoch 3/3") == 1
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [r["world_size"] for r in history] == [2, 2, 2]


@pytest.mark.slow
def test_errors_stop_every_process(two):
    own, other = (rank["errors"] for rank in reversed(two["ranks"]))
    assert "labels out of range" in own["labels"]
    assert "process 1 of 2 met an error" in other["labels"]
    for rank in two["ranks"]:
        assert "must be divisible by the 2 processes; use 8 or 10" in rank["errors"]["batch"]


# ------------------------------------------------------------------------------------
# one process: the split itself and the entry points
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "batch", "world"), [(10, 4, 2), (11, 6, 3), (7, 8, 2), (5, 2, 1)])
def test_shares_make_up_each_global_batch(n, batch, world):
    plans = [
        list(dp.batch_indices(n, batch, torch.Generator().manual_seed(5), True, r, world))
        for r in range(world)
    ]
    total = dp.padded_length(n, world)
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == -(-total // batch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    padded = order.repeat(2)[:total]
    seen = []
    for step, start in enumerate(range(0, total, batch)):
        shares = [p[step] for p in plans]
        assert len({len(s) for s in shares}) == 1  # equal shares: DDP's mean is the batch mean
        together = torch.cat(shares)
        assert sorted(together.tolist()) == sorted(padded[start : start + batch].tolist())
        seen += together.tolist()
    assert set(seen) == set(range(n)) and len(seen) - n == -n % world


def test_single_process_entry_points():
    assert dp.context(None) is dp.LOCAL and dp.context(False) is dp.LOCAL
    with pytest.raises(ValueError, match="torchrun --nproc-per-node"):
        dp.context(True)
    with pytest.raises(ValueError, match="distributed=True but"):
        bp.fit(_model("bayes"), _blobs(20), epochs=1, distributed=True)
    with pytest.raises(ValueError, match="distributed must be None, True or False"):
        dp.context("yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        dp.launch(len, 0)
    assert dp.launch(len, 1, "abc") == [3]
    assert dp.rank_seed(5, 0) == 5 and len({dp.rank_seed(5, r) for r in range(4)}) == 4
    dp.check_batch_size(9, 1)
