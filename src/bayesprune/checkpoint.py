"""Training checkpoints: model, likelihood, optimizer and RNG state in one safetensors file.

One file per epoch (`epoch-0003.safetensors`), written atomically, the JSON state
(epoch, history, optimizer hyper-parameters, fit settings) in its header. Loading
never unpickles. Resuming restores every random stream, so a resumed run ends with
exactly the parameters of an uninterrupted one. A data-parallel run (see
`bayesprune.distributed`) is saved by rank 0 alone, with every rank's torch RNG
state stacked in `rng.torch.ranks` (world_size × state); each rank restores its row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as dp
from .io import CheckpointError, load_tensors, save_tensors
from .validation import check_checkpoint_meta

_NAME = re.compile(r"^epoch-(\d{4,})\.safetensors$")
FORMAT = "bayesprune-checkpoint/1"


@dataclass
class TrainingState:
    epoch: int  # epochs completed
    history: list[dict[str, Any]]
    settings: dict[str, Any]
    world_size: int = 1  # processes that trained it: ranks >= this have no saved RNG state


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:04d}.safetensors"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files of `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entries in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    saved, now = len(meta["param_groups"]), len(optimizer.param_groups)
    if saved != now:
        raise CheckpointError(
            f"its optimizer has {saved} parameter group(s), this run's has {now}: the groups "
            "follow the learning-rate factors, so it was written with other lr_multipliers "
            "(before 0.1.0 the Gaussian layers' σ had no declared third: resume such a run "
            'with lr_multipliers={"_rho": 1.0}).'
        )
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(
    folder: Path,
    model: nn.Module,
    likelihood: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader_rng: torch.Generator,
    state: TrainingState,
    keep: int,
    rank_rng_states: Tensor | None = None,
) -> Path:
    """Write the state atomically; `rank_rng_states` (world_size × state) from a DDP run."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"likelihood.{k}": v for k, v in likelihood.state_dict().items()})
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.loader"] = loader_rng.get_state()
    if rank_rng_states is not None:
        tensors["rng.torch.ranks"] = rank_rng_states
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "world_size": 1 if rank_rng_states is None else len(rank_rng_states),
        "history": state.history,
        "settings": state.settings,
        "optimizer": optim_meta,
    }
    path = save_tensors(checkpoint_path(folder, state.epoch), tensors, meta)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_training_state(
    path: Path,
    model: nn.Module,
    likelihood: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader_rng: torch.Generator,
    *,
    raw: bytes | None = None,
    rank: int = 0,
) -> TrainingState:
    """Restore everything `save_training_state` wrote; a mismatch is one clear error.

    `raw`: the file's bytes if already read (rank 0 broadcasts them); `rank`: whose
    torch RNG state to restore. A rank the file has no state for keeps its own.
    """
    tensors, meta = load_tensors(path, raw)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bayesprune training checkpoint")
    check_checkpoint_meta(meta, path)
    for prefix, module in (("model.", model), ("likelihood.", likelihood)):
        sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} does not fit this model ({err}); resume with the same architecture "
                "it was trained with, or start a fresh run in a new checkpoint folder"
            ) from err
    _restore_optimizer(optimizer, tensors, meta["optimizer"])
    per_rank = tensors.get("rng.torch.ranks")
    if per_rank is not None and rank < len(per_rank):
        torch.set_rng_state(per_rank[rank].clone())  # a row view crashes set_rng_state
    elif rank == 0:
        torch.set_rng_state(tensors["rng.torch"])
    loader_rng.set_state(tensors["rng.loader"])
    world = meta.get("world_size", 1)
    return TrainingState(meta["epoch"], meta["history"], meta["settings"], world)


def resume_training(
    folder: Path,
    model: nn.Module,
    likelihood: nn.Module,
    opt: torch.optim.Optimizer,
    loader_rng: torch.Generator,
    ctx: dp.DistContext = dp.LOCAL,
    seed: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """Restore the newest checkpoint of `folder`: (epochs completed, their history records).

    With several processes rank 0 reads it and broadcasts the bytes; (0, []) when the
    folder holds none.
    """
    found = list_checkpoints(folder) if ctx.is_main else []
    names = json.loads(ctx.broadcast_bytes(json.dumps([p.name for p in found[-2:]]).encode()))
    if not names:
        return 0, []
    newest = folder / names[-1]
    raw = ctx.broadcast_bytes(newest.read_bytes() if ctx.is_main else b"") if ctx.active else None
    try:
        state = load_training_state(
            newest, model, likelihood, opt, loader_rng, raw=raw, rank=ctx.rank
        )
    except CheckpointError as err:
        older = f" The previous one is {names[-2]}." if len(names) > 1 else ""
        raise CheckpointError(
            f"cannot resume: {err} To resume from an earlier epoch, move {newest.name} "
            f"aside.{older}"
        ) from err
    if ctx.rank >= state.world_size:  # saved by fewer processes: a fresh, reproducible stream
        torch.manual_seed(dp.rank_seed(seed, ctx.rank, state.epoch))
    return state.epoch, list(state.history)
