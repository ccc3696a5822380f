"""benchmarks/peers.py's time to accuracy: each contender draws its own weight noise.

Interleaving contenders step by step shares torch's global generator; without the swap a
contender's draws (hence its split's result) depended on which others ran beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import Run, _noise_state, _own_noise

CPU = torch.device("cpu")


def _seeded_run(seed: int) -> Run:
    torch.manual_seed(seed)
    run = Run(recipe=None, trainer=None, generator=torch.Generator())  # type: ignore[arg-type]
    run.noise_state = _noise_state(CPU)
    return run


def _draws(run: Run, others: list[Run]) -> list[torch.Tensor]:
    """Three steps' noise of `run`, each after a step of every run in `others`."""
    out = []
    for _ in range(3):
        for other in others:
            with _own_noise(other, CPU):
                torch.randn(7)
        torch.randn(2)  # noise drawn outside any run's block changes nothing either
        with _own_noise(run, CPU):
            out.append(torch.randn(4))
    return out


def test_a_contenders_noise_does_not_depend_on_the_others() -> None:
    alone = _draws(_seeded_run(1), [])
    beside_two = _draws(_seeded_run(1), [_seeded_run(2), _seeded_run(3)])
    for a, b in zip(alone, beside_two, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(alone[0], alone[1])  # the state moves on between steps
