"""The benchmarks' house rules, checked statically (ast, nothing imported or run): no file over
500 lines, and no import cycle among the benchmarks' modules, counting imports inside functions
too (a lazy import closes a circle as surely as a top-level one)."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "benchmarks"
MAX_LINES = 500


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every .py file under benchmarks/."""
    out = {}
    base = os.path.join(ROOT, PACKAGE)
    for folder, _, files in os.walk(base):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = path
    return out


def _imported(module: str, path: str, known: set[str]) -> set[str]:
    """The benchmarks modules ``module`` imports, anywhere in the file."""
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            # "from . import x" / "from .pkg import mod" name modules; "from .mod import f" names the module
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != module}
    return found


def _cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # a package's __init__ is imported along with any of its modules, but that is not an import of it
    return {m: _imported(m, p, known) - {PACKAGE} for m, p in modules.items()}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_benchmarks_file_over_500_lines(module):
    path = _modules()[module]
    with open(path) as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_LINES, f"{os.path.relpath(path, ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_no_import_cycle_among_benchmarks_modules():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_the_split_it_guards():
    """The checker reads the imports it must: speed imports its parts, the plots import the
    settings, and a circle (the old quality <-> quality_plots one) is reported."""
    graph = import_graph()
    assert {"benchmarks.speed_step", "benchmarks.speed_memory", "benchmarks.measure"} <= graph["benchmarks.speed"]
    assert "benchmarks.measure" in graph["benchmarks.speed_models"]
    assert "benchmarks.quality_settings" in graph["benchmarks.quality_plots"]
    assert "benchmarks.quality" not in graph["benchmarks.quality_plots"]
    assert "benchmarks.quality_plots" in graph["benchmarks.quality"]  # the lazy import inside write_outputs
    circle = {**graph, "benchmarks.quality_plots": graph["benchmarks.quality_plots"] | {"benchmarks.quality"}}
    assert _cycle(circle) is not None
