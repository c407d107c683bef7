"""Finding and starting the real ComfyUI for the host tests (never a stub).

Lookup order: $COMFYUI_PATH; the ComfyUI that contains this pack
(``ComfyUI/custom_nodes/<pack>``); ``~/comfy/ComfyUI`` (comfy-cli's default workspace).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOW_TO = (
    "no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout (>= 0.3.64), install this pack into "
    "ComfyUI/custom_nodes/, or put ComfyUI at ~/comfy/ComfyUI"
)


def _is_comfyui(path: str) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "comfy", "model_management.py")) and os.path.isfile(
        os.path.join(path, "nodes.py")
    )


def find_comfyui() -> str | None:
    parent = os.path.dirname(PACK_DIR)
    candidates = [
        os.environ.get("COMFYUI_PATH", ""),
        os.path.dirname(parent) if os.path.basename(parent) == "custom_nodes" else "",
        os.path.expanduser("~/comfy/ComfyUI"),
    ]
    for path in candidates:
        if _is_comfyui(path):
            return os.path.abspath(path)
    return None


class Host:
    """The started ComfyUI: its root, its ``nodes`` module and the loaded pack's nodes."""

    def __init__(self, root, comfy_nodes, pack_module_name):
        self.root = root
        self.nodes = comfy_nodes
        self.pack_module_name = pack_module_name

    def node(self, node_id):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def internal(self, name):
        """A module of the pack as ComfyUI imported it, by its dotted name inside the pack
        ("nodes.plan", "asag_core"). Tests reach the pack's internals only through this."""
        return sys.modules[f"{self.pack_module_name}.{name}"]

    @property
    def pack(self):
        """The pack as ComfyUI imported it (its submodules: .nodes.adversarial_call ...)."""
        return sys.modules[self.pack_module_name]


def comfyui_version(root) -> tuple:
    """The version of the ComfyUI at ``root`` (its comfyui_version.py), as a tuple of ints."""
    with open(os.path.join(root, "comfyui_version.py"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                return tuple(int(p) for p in line.split("=")[1].strip().strip("\"'").split("."))
    raise ValueError(f"no __version__ in {root}/comfyui_version.py")


@functools.lru_cache(maxsize=1)
def start_host() -> Host | None:
    root = find_comfyui()
    if root is None:
        return None
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_all_custom_nodes = False
    import comfy.model_management  # noqa: F401  (asserts CUDA unless --cpu was set first)

    # as main.py does before nodes.py puts comfy/ first on sys.path: ComfyUI's own utils package, so the
    # extras that import it (server -> utils.install_util) load in process (else `utils` is comfy/utils.py)
    import utils.extra_config  # noqa: F401

    import nodes as comfy_nodes

    before = set(comfy_nodes.NODE_CLASS_MAPPINGS)
    loaded = asyncio.run(comfy_nodes.load_custom_node(PACK_DIR))
    if not loaded:
        raise RuntimeError(f"ComfyUI at {root} failed to load the pack from {PACK_DIR}; see the log above")
    missing = {"ASAG", "ASAGAdvanced", "ASAGGuider"} - set(comfy_nodes.NODE_CLASS_MAPPINGS)
    if missing:
        raise RuntimeError(f"the pack loaded but did not register {sorted(missing)} (had {sorted(before)[:3]}...)")
    return Host(root, comfy_nodes, PACK_DIR.replace(".", "_x_"))
