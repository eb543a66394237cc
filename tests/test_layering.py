"""The package's layering, read from its sources with ``ast`` (nothing is imported).

From the bottom: ``numerics``; ``recipes``; ``dispatch`` and ``ops``; ``kernels``; ``lowering`` and
``passes``; ``debug``; ``backend``; then what drives the backend (``emulate``, ``testing``, ``training``, the
CLI). Checked here: the kernels, the numerics and the passes import nothing from the layers above them
(:data:`FORBIDDEN`), and the import graph of the package's modules has no cycle. Every ``import`` and
``from ... import`` counts, at module level or inside a function, and so does
``importlib.import_module("literal.name")``.
"""

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ufp4_compile"

# Package (prefix) -> the packages and modules it must not import from.
FORBIDDEN = {
    "ufp4_compile.kernels": ("ufp4_compile.lowering", "ufp4_compile.passes", "ufp4_compile.backend",
                             "ufp4_compile.debug"),
    "ufp4_compile.numerics": ("ufp4_compile.kernels", "ufp4_compile.lowering", "ufp4_compile.passes",
                              "ufp4_compile.backend"),
    "ufp4_compile.passes": ("ufp4_compile.debug", "ufp4_compile.backend"),
}


@dataclasses.dataclass(frozen=True)
class Import:
    name: str  # the dotted name imported: a module, or a package whose attribute is taken
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, path: Path) -> list[Import]:
    """Every import of a ``ufp4_compile`` name in ``path``, wherever it sits in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # ``from pkg import mod`` imports the module pkg.mod
                full = f"{base}.{alias.name}"
                found.append(Import(full if full in MODULES else base, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(node.args[0].value, node.lineno))
    ours = {i for i in found if i.name == "ufp4_compile" or i.name.startswith("ufp4_compile.")}
    return sorted(ours, key=lambda i: (i.line, i.name))


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _owner(name: str) -> str:
    """The package module that executes when ``name`` is imported (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _graph() -> dict[str, set[str]]:
    return {module: {_owner(i.name) for i in imports} - {module} for module, imports in IMPORTS.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_from_above(layer):
    violations = [f"{MODULES[module].relative_to(PACKAGE.parent)}:{i.line} imports {i.name}"
                  for module, imports in IMPORTS.items() if _within(module, layer)
                  for i in imports if any(_within(i.name, banned) for banned in FORBIDDEN[layer])]
    assert not violations, (f"{layer} must not import from {', '.join(FORBIDDEN[layer])}; move what both "
                            f"sides need below them (as ufp4_compile/dispatch.py is):\n" + "\n".join(violations))


def test_import_graph_is_acyclic():
    graph = _graph()
    lines = []
    for component in _cycles(graph):
        lines.append("cycle among " + ", ".join(component) + ":")
        lines += [f"  {MODULES[m].relative_to(PACKAGE.parent)}:{i.line} imports {i.name}"
                  for m in component for i in IMPORTS[m] if _owner(i.name) in component and _owner(i.name) != m]
    assert not lines, "import cycles (break each by moving the shared piece to the lower module):\n" + "\n".join(lines)


def test_the_scan_sees_every_kind_of_import():
    graph = _graph()
    assert "ufp4_compile.numerics.formats" in graph["ufp4_compile.recipes"]  # module level
    assert "ufp4_compile.passes.joint_pass" in graph["ufp4_compile.backend"]  # inside a function
    assert "ufp4_compile.lowering" in graph["ufp4_compile.backend"]  # importlib.import_module("...")
    assert "ufp4_compile.passes.report" in graph["ufp4_compile.passes"]  # package __init__
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
