"""Every ComfyUI internal the pack touches sits in nodes/comfy_internals.py (static checks)."""

from __future__ import annotations

import ast
import pathlib

NODES = pathlib.Path(__file__).resolve().parent.parent / "nodes"
HOST_PACKAGES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "nodes", "folder_paths", "server")


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _host_imports(path):
    return sorted({m for m in _imported_modules(path) if m.split(".")[0] in HOST_PACKAGES})


def test_only_comfy_internals_imports_comfyui():
    offenders = {p.name: _host_imports(p) for p in NODES.glob("*.py") if p.name != "comfy_internals.py"}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_comfy_internals_imports_comfyui():
    assert _host_imports(NODES / "comfy_internals.py"), "the one place lost its imports"


def test_the_entry_point_imports_no_comfyui_at_import_time():
    """The package __init__ imports the glue inside comfy_entrypoint only (pytest imports the package)."""
    init = NODES.parent / "__init__.py"
    tree = ast.parse(init.read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top_level == []
