"""The layering contract: family knowledge stays inside `bayesprune.nn`.

Compression, selection and the screen read layers through the interfaces of
`nn.base` (posterior, gate protocol) and never import a concrete layer class or a
private name of `nn/`; no module outside `nn/` compares a value to a family name;
data flow one way: `compress/` never imports training or prediction code.
These tests parse the source, so they fail on the import itself, not on a run.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import bayesprune
from bayesprune import nn as bnn
from bayesprune.nn import GatedLayer, SerializableLayer, VariationalLayer

PACKAGE = Path(bayesprune.__file__).parent
READERS = [
    *sorted((PACKAGE / "compress").glob("*.py")),
    PACKAGE / "selection.py",
    PACKAGE / "screen.py",
]
INTERFACES = {"VariationalLayer", "GatedLayer", "SerializableLayer"}


def _module_name(path: Path) -> str:
    if PACKAGE.parent not in path.parents:
        return f"bayesprune.{path.stem}"
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _nn_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every name imported from bayesprune.nn[...] by `path`."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = _module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module == "bayesprune.nn" or module.startswith("bayesprune.nn."):
                found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bayesprune.nn."):
                    found.append((alias.name, "*"))
    return found


def _concrete_layer_names() -> set[str]:
    names = set()
    for name, obj in vars(bnn).items():
        if inspect.isclass(obj) and issubclass(obj, SerializableLayer):
            names.add(name)
    for cls in bnn.layer_types().values():
        names.add(cls.__name__)
    return names - INTERFACES


@pytest.mark.parametrize("path", READERS, ids=lambda p: _module_name(p))
def test_readers_use_only_the_nn_interfaces(path):
    concrete = _concrete_layer_names()
    assert {"SpikeSlabLinear", "BayesConv2d", "EVILinear"} <= concrete  # the check can fail
    bad = [
        f"{module}.{name}"
        for module, name in _nn_imports(path)
        if name.startswith("_")
        or name in concrete
        or any(p.startswith("_") for p in module.split("."))
    ]
    assert not bad, f"{path.name} imports concrete or private names of nn/: {bad}"


def test_the_import_check_sees_a_violation(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from .nn.spike_slab.node import _NodeSpikeSlab\nfrom .nn import kl\n")
    assert _nn_imports(probe) == [
        ("bayesprune.nn.spike_slab.node", "_NodeSpikeSlab"),
        ("bayesprune.nn", "kl"),
    ]
    probe.write_text("if model.family == 'evi':\n    pass\n")
    assert _family_comparisons(probe, {"evi"}) == [1]


def _family_comparisons(path: Path, names: set[str]) -> list[int]:
    """Lines where a family (a name mentioning "family") is compared with a family name."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare) or "family" not in ast.unparse(node.left):
            continue
        for right in node.comparators:
            values = right.elts if isinstance(right, ast.Tuple | ast.List | ast.Set) else [right]
            if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                lines.append(node.lineno)
    return lines


def test_no_family_string_ladders_outside_nn():
    names = set(bnn.families())
    assert {"spike_slab", "evi", "deterministic"} <= names
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "nn") in path.parents:
            continue
        found = _family_comparisons(path, names)
        if found:
            offenders[_module_name(path)] = found
    assert not offenders, (
        f"compare with family names outside nn/ (ask the Family record): {offenders}"
    )


def test_every_family_answers_the_questions_the_app_asks():
    for name in bnn.families():
        family = bnn.get_family(name)
        assert family.name == name
        assert family.default_score in {"snr", "pip", "norm", "magnitude", "log_alpha"}
        assert family.convertible or family.builders or not family.bayesian
    assert bnn.get_family("evi").deterministic_predictive
    assert bnn.get_family("spike_slab").gated and bnn.get_family("spike_slab").takes("input_gates")
    with pytest.raises(ValueError, match="valid families"):
        bnn.get_family("spike-slab")


def test_gate_protocol_is_offered_by_every_gated_layer():
    gated = [c for c in bnn.layer_types().values() if issubclass(c, GatedLayer)]
    assert {c.__name__ for c in gated} >= {"SpikeSlabLinear", "SpikeSlabEdgeConv2d"}
    for cls in gated:
        assert issubclass(cls, VariationalLayer)


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
    assert "bayesprune.compress.shrink.shrink" in here and "bayesprune.compress.rules" in here
    assert _forbidden("bayesprune.train") and _forbidden("bayesprune.predict.predict")
    assert not _forbidden("bayesprune.training_data")


def test_no_compress_module_imports_train_or_predict():
    """Data flows one way: compression never imports training or prediction code."""
    modules = sorted((PACKAGE / "compress").rglob("*.py"))
    assert len(modules) > 5
    found = {
        str(path.relative_to(PACKAGE)): bad
        for path in modules
        if (bad := [name for name in _imports(path) if _forbidden(name)])
    }
    assert found == {}
