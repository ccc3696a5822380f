"""Tiny synthetic image data shared by the moment-propagation and self-compression tests."""

import torch


def bars(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8×8 images of a row, a column or the diagonal, plus noise (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    pos = torch.randint(1, 7, (n,), generator=g)
    idx = torch.arange(n)
    x[idx[y == 0], 0, pos[y == 0], :] += 1.0
    x[idx[y == 1], 0, :, pos[y == 1]] += 1.0
    x[idx[y == 2]] += torch.eye(8)
    return x, y
