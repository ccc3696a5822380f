"""Tiny synthetic image data shared by the tests: tensors for the moment-propagation and
self-compression tests, and IDX files standing in for MNIST / Fashion-MNIST under a
temporary `data.root` (so the CLI's OOD paths run without the real data)."""

import numpy as np
import torch

from bayesprune.data.idx import encode_idx


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


def idx_bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.uniform(0, 120, (n, 28, 28))  # noisy enough that the net is not always sure
    for i, label in enumerate(y):
        row = 2 + 2 * label + rng.integers(0, 2)
        x[i, row : row + 2, 4:24] += 90 + rng.uniform(0, 15)
    return x.clip(0, 255).astype(np.uint8), y.astype(np.uint8)


def idx_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, 28, 28))
    for i in range(n):
        r, c = rng.integers(4, 18, 2)
        x[i, r : r + 8, c : c + 8] += 150
    return x.clip(0, 255).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_idx_set(root, name: str, make, seed: int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for prefix, n in (("train", 500), ("t10k", 200)):
        x, y = make(n, seed + (prefix == "t10k"))
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(encode_idx(x))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(encode_idx(y))


def write_image_sets(root) -> None:
    """ "mnist": a horizontal bar whose row is the class; "fashion-mnist": blobs (500
    training and 200 test images each)."""
    write_idx_set(root, "mnist", idx_bars, 0)
    write_idx_set(root, "fashion-mnist", idx_blobs, 10)
