"""The house rules, checked on the source: no import cycles, no private names imported across
modules, modules of at most 500 lines, no numba, layers as import-linter states them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bayesneuron"
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every import of a bayesneuron module, lazy ones
    (inside functions) included; relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "bayesneuron":
                found.append((mod, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "bayesneuron":
                    found.append((a.name, [], node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for mod, names, _ in _imports(name, path):
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
            deps.update(subs)  # `from pkg import submodule` depends on the submodule
            inside = name.startswith(mod + ".")  # a module's own parent packages run first anyway
            if mod in MODULES and not (inside and subs):
                deps.add(mod)
        deps.discard(name)
        graph[name] = deps
    return graph


def test_no_import_cycles_among_modules():
    graph = _graph()
    # a package's __init__ re-exports its children; an edge child → parent package is the
    # only way back, so cycles through __init__ files are real cycles too
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # the root package imports every layer; layers importing the root would be a cycle
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_library_modules_do_not_import_the_package_root():
    bad = [
        f"{name}:{line}"
        for name, path in MODULES.items()
        if name != "bayesneuron"
        for mod, names, line in _imports(name, path)
        if mod == "bayesneuron" and any(f"bayesneuron.{n}" not in MODULES for n in names)
    ]
    assert not bad, f"import names from the root package (it imports every layer): {bad}"


def test_no_private_names_imported_across_modules():
    """``from x import _name`` only where ``_name`` is a private *module* of the importer's own
    package (a subpackage's internals are its own business)."""
    bad = []
    for name, path in MODULES.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for mod, names, line in _imports(name, path):
            for n in names:
                if not n.startswith("_") or n.startswith("__"):
                    continue
                if f"{mod}.{n}" in MODULES and mod == own_package:
                    continue
                bad.append(f"{name}:{line} imports {mod}.{n}")
    assert not bad, "\n".join(bad)


def test_modules_are_at_most_500_lines():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_numba_is_gone():
    text = (ROOT / "pyproject.toml").read_text()
    assert "numba" not in text
    for path in MODULES.values():
        assert "import numba" not in path.read_text(), path


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.mark.skipif(
    not LINT_IMPORTS.exists() and shutil.which("lint-imports") is None,
    reason="import-linter not installed",
)
def test_layers_contract_holds():
    exe = str(LINT_IMPORTS) if LINT_IMPORTS.exists() else "lint-imports"
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


MAX_FUNCTION_LINES = 80


def test_functions_are_at_most_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (docstring included): {long}"
