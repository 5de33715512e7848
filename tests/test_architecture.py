"""The package's layers, read from its source: no import cycle inside gpt1cli, and the model
never imports training.

Every ``import`` of a ``gpt1cli`` module counts, at module level or inside a function alike: a
function-level import does not fail at start-up, but it still ties two layers together, and
deferring an import is the usual way a cycle gets hidden rather than removed. Importing a
submodule runs its parent package's ``__init__`` first, but that is not counted as the submodule
importing its parent (only an explicit ``from . import name`` is), so a package ``__init__`` may
import its own submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import REPO

PACKAGE = "gpt1cli"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> source file of every module under the package folder ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([root.name, *parts])] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement asks for (a ``from`` import: each ``base.name``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that defines ``name`` (itself, or the longest module prefix of it)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth of its source."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            asked = _imported(node, module, is_package)
            if isinstance(node, ast.ImportFrom):
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
                asked = [name for name in asked[:-1] if name in modules] or asked[-1:]
            targets.update(owner for owner in (_owner(name, modules) for name in asked) if owner)
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph has none (depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, branches = [start], [iter(sorted(graph[start]))]
        while branches:
            target = next(branches[-1], None)
            if target is None:
                done.add(path.pop())
                branches.pop()
            elif target in path:
                return path[path.index(target):] + [target]
            elif target not in done:
                path.append(target)
                branches.append(iter(sorted(graph[target])))
    return None


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph seen from one level down the package: each subpackage (``gpt1cli.model``)
    or top-level module (``gpt1cli.config``) is one node."""
    def layer(module: str) -> str:
        return ".".join(module.split(".")[:2])

    layers: dict[str, set[str]] = {}
    for source, targets in graph.items():
        layers.setdefault(layer(source), set()).update(layer(t) for t in targets)
    for name, targets in layers.items():
        targets.discard(name)
    return layers


def layer_breaches(graph: dict[str, set[str]], importer: str, imported: str) -> list[str]:
    """The imports of layer ``imported``'s modules by layer ``importer``'s, as ``a -> b`` lines."""
    def inside(module: str, layer: str) -> bool:
        return module == layer or module.startswith(layer + ".")

    return [f"{source} -> {target}" for source, targets in sorted(graph.items()) if inside(source, importer)
            for target in sorted(targets) if inside(target, imported)]


# ---------------------------------------------------------------------------------------------


def test_gpt1cli_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO / PACKAGE))
    assert cycle is None, "import cycle inside gpt1cli: " + " -> ".join(cycle)


def test_the_layers_have_no_import_cycle():
    """Subpackages in order: no two of them import each other, even through different modules."""
    graph = import_graph(REPO / PACKAGE)
    cycle = find_cycle(layer_graph(graph))
    assert cycle is None, "import cycle between gpt1cli's layers: " + " -> ".join(cycle) + "\n" + "\n".join(
        breach for importer, imported in zip(cycle, cycle[1:]) for breach in layer_breaches(graph, importer, imported))


def test_the_model_does_not_import_training():
    breaches = layer_breaches(import_graph(REPO / PACKAGE), f"{PACKAGE}.model", f"{PACKAGE}.train")
    assert not breaches, "gpt1cli.model imports gpt1cli.train:\n" + "\n".join(breaches)


def test_every_package_is_installed():
    """A package folder missing from pyproject's list would be left out of a (non-editable) install."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in module_names(REPO / PACKAGE).items() if path.name == "__init__.py"}
    assert packages <= listed, f"add {sorted(packages - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_the_walker_sees_cycles_hidden_in_functions_and_layer_breaches(tmp_path):
    """The checks above pass because the code is clean, not because the walker is blind."""
    files = {
        "__init__.py": "",
        "low.py": "import os\n",
        "model/__init__.py": "",
        "model/gpt.py": "from .. import low\n\ndef build():\n    from ..train.loop import fit\n",
        "train/__init__.py": "",
        "train/loop.py": "from gpt1cli.model.gpt import build\nfrom . import fit_helpers\n",
        "train/fit_helpers.py": "from ..low import os\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    graph = import_graph(tmp_path / PACKAGE)
    assert graph["gpt1cli.train.loop"] == {"gpt1cli.model.gpt", "gpt1cli.train.fit_helpers"}
    assert graph["gpt1cli.train.fit_helpers"] == {"gpt1cli.low"}
    assert find_cycle(graph) == ["gpt1cli.model.gpt", "gpt1cli.train.loop", "gpt1cli.model.gpt"]
    assert layer_breaches(graph, "gpt1cli.model", "gpt1cli.train") == ["gpt1cli.model.gpt -> gpt1cli.train.loop"]
    assert find_cycle(layer_graph(graph)) == ["gpt1cli.model", "gpt1cli.train", "gpt1cli.model"]
    (tmp_path / PACKAGE / "model/gpt.py").write_text("from .. import low\n\ndef build():\n    pass\n")
    assert find_cycle(import_graph(tmp_path / PACKAGE)) is None
    (tmp_path / PACKAGE / "model/loading.py").write_text("from ..train.fit_helpers import os\n")
    graph = import_graph(tmp_path / PACKAGE)  # no module cycle, but model and train import each other
    assert find_cycle(graph) is None
    assert find_cycle(layer_graph(graph)) == ["gpt1cli.model", "gpt1cli.train", "gpt1cli.model"]
