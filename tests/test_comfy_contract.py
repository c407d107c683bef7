"""The ComfyUI contract (static checks): only nodes/comfy_bridge.py imports ComfyUI, no other module
of the pack writes a ComfyUI key or literal of nodes/comfy_contract.py, and the pure modules reach
no ComfyUI import through the pack's own imports."""

from __future__ import annotations

import ast
import pathlib

from pack_modules import pure

NODES = pathlib.Path(__file__).resolve().parent.parent / "nodes"
HOST_PACKAGES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "nodes", "folder_paths", "server")
BRIDGE = "comfy_bridge"
#: the modules of nodes/ that must import without ComfyUI (unit-tested without a host)
PURE = {"comfy_contract", "families", "model_layers", "plan", "row_split", "handoff"}
#: contract literals that are also the pack's own names: model module names (family knowledge: the U-Net's
#: and LTXV's self-attention "attn1"), and the ASAG nodes' own input "scale"
OWN_NAMES = {("families", "attn1"), ("guidance_nodes", "scale")}


def _tree(name):
    path = NODES / f"{name}.py"
    return ast.parse(path.read_text(), filename=str(path))


def _modules():
    return sorted(p.stem for p in NODES.glob("*.py") if p.stem != "__init__")


def _host_imports(name):
    found = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return sorted(m for m in found if m.split(".")[0] in HOST_PACKAGES)


def _pack_imports(name):
    """The nodes/ modules ``name`` imports (``from . import x``, ``from .x import y``)."""
    found = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_only_the_bridge_imports_comfyui():
    assert {name: _host_imports(name) for name in _modules() if name != BRIDGE and _host_imports(name)} == {}
    assert _host_imports(BRIDGE), "the one place lost its imports"


def test_the_pure_modules_reach_no_comfyui():
    for name in PURE:
        seen, todo = set(), [name]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += _pack_imports(module)
        assert BRIDGE not in seen, f"{name} imports ComfyUI through {sorted(seen)}"
    for name in PURE:
        assert pure(f"nodes.{name}").__name__.endswith(name)


def _contract_literals():
    contract = pure("nodes.comfy_contract")
    return {value for name, value in vars(contract).items()
            if name.isupper() and isinstance(value, str)} | set(contract.ATTENTION_PARAMS)


def test_no_comfyui_literal_outside_the_contract():
    literals = _contract_literals()
    assert {"sampler_post_cfg_function", "transformer_options", "diffusion_model", "attn1"} <= literals
    offenders = set()
    for name in _modules():
        if name == "comfy_contract":
            continue
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.Constant) and node.value in literals and (name, node.value) not in OWN_NAMES:
                offenders.add((name, node.value, node.lineno))
    assert offenders == set()


def test_the_entry_point_imports_no_comfyui_at_import_time():
    """The package __init__ imports the glue inside comfy_entrypoint only (pytest imports the package)."""
    tree = ast.parse((NODES.parent / "__init__.py").read_text())
    assert [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] == []
    assert [n for n in _tree("__init__").body if isinstance(n, (ast.Import, ast.ImportFrom))] == []
