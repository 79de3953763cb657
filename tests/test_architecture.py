"""The package's import graph: no cycles, and no lower layer importing a higher one.

Every `import` of a tunelab module counts, at module level and inside functions alike (a lazy
import is still a dependency). The layers, bottom to top (docs/architecture.md explains them):

  0 foundation  tunelab (the package), cpu, errors, io, paths, progress, runs, builtin_data
  1 models      tunelab.models.*          (loading and running models; knows no recipe)
  2 config      tunelab.config            (the recipe; may use models.catalog's default model)
  3 data        tunelab.data.*            (reads the recipe's DataConfig)
  4 stages      train, evaluate, export
  5 apps        compare, serve, pipeline, report
  6 cli         tunelab.cli

A module may import modules of its own layer or lower ones; within a layer, no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tunelab"

LAYERS = [
    (
        "foundation",
        {
            "tunelab",
            "tunelab.cpu",
            "tunelab.errors",
            "tunelab.io",
            "tunelab.paths",
            "tunelab.progress",
            "tunelab.runs",
            "tunelab.builtin_data",
        },
    ),
    ("models", {"tunelab.models"}),
    ("config", {"tunelab.config"}),
    ("data", {"tunelab.data"}),
    ("stages", {"tunelab.train", "tunelab.evaluate", "tunelab.export"}),
    ("apps", {"tunelab.compare", "tunelab.serve", "tunelab.pipeline", "tunelab.report"}),
    ("cli", {"tunelab.cli"}),
]


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("tunelab", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The tunelab module an imported name lives in (`tunelab.models.chat.load_chat_model` -> `tunelab.models.chat`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{imported tunelab module: first line} for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            target = owning_module(name, modules) if name.startswith("tunelab") else None
            if target and target != module:
                found.setdefault(target, node.lineno)
    return found


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "tunelab" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (rank, prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__} and to docs/architecture.md"
    return best[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    modules = module_names()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_lower_layer_imports_a_higher_one(graph):
    wrong = [
        f"{src} (layer {LAYERS[layer_of(src)][0]}) imports {dst} (layer {LAYERS[layer_of(dst)][0]}) at line {line}"
        for src, targets in sorted(graph.items())
        for dst, line in sorted(targets.items())
        if layer_of(dst) > layer_of(src)
    ]
    assert not wrong, "\n".join(wrong)


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, {})):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    """The walk above must notice an import inside a function, or the other tests could never fail."""
    modules = {"tunelab.a": tmp_path / "a.py", "tunelab.b": tmp_path / "b.py"}
    modules["tunelab.a"].write_text("def f():\n    from tunelab.b import g\n    return g\n")
    modules["tunelab.b"].write_text("from tunelab import a\n\ndef g():\n    pass\n")
    modules["tunelab"] = tmp_path / "__init__.py"
    modules["tunelab"].write_text("")
    assert imports_of("tunelab.a", modules["tunelab.a"], modules) == {"tunelab.b": 2}
    assert imports_of("tunelab.b", modules["tunelab.b"], modules) == {"tunelab.a": 1}
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert find_cycles(graph) == [["tunelab.a", "tunelab.b", "tunelab.a"]]
    assert layer_of("tunelab.cli") > layer_of("tunelab.export.run") > layer_of("tunelab.data.prepare") > layer_of("tunelab.config")
    assert layer_of("tunelab.config") > layer_of("tunelab.models.chat") > layer_of("tunelab.runs") == layer_of("tunelab")
