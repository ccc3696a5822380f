"""Data flows one way: compression never imports training or prediction code."""

from __future__ import annotations

import ast
from pathlib import Path

import bayesprune

PACKAGE = Path(bayesprune.__file__).parent
FORBIDDEN = ("bayesprune.train", "bayesprune.predict", "bayesprune.finetuning")


def _imports(path: Path) -> list[str]:
    """Absolute names of every module (and `from` name) `path` imports, relative ones resolved."""
    parts = ["bayesprune", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = parts[:-1]  # what a one-dot import is relative to (also for __init__)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return names


def _forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


def test_the_import_parser_sees_relative_and_absolute_imports():
    here = _imports(PACKAGE / "compress" / "self_compress.py")
    assert "bayesprune.compress.shrink.shrink" in here and "bayesprune.nn.moments" in here
    assert _forbidden("bayesprune.train") and _forbidden("bayesprune.predict.predict")
    assert not _forbidden("bayesprune.training_data")


def test_no_compress_module_imports_train_or_predict():
    modules = sorted((PACKAGE / "compress").rglob("*.py"))
    assert len(modules) > 5
    found = {
        str(path.relative_to(PACKAGE)): bad
        for path in modules
        if (bad := [name for name in _imports(path) if _forbidden(name)])
    }
    assert found == {}
