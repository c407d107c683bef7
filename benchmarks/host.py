"""The real ComfyUI for the benchmarks, found and started exactly as the host tests do.

This reuses ``tests/comfy_host.py`` (lookup: ``$COMFYUI_PATH``, the ComfyUI that contains
this pack, ``~/comfy/ComfyUI``; CPU mode; the pack loaded by ComfyUI's own loader).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def start_host():
    """The started ComfyUI (``comfy_host.Host``); exits with the tests' hint when none is found."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import comfy_host

    host = comfy_host.start_host()
    if host is None:
        raise SystemExit(comfy_host.HOW_TO)
    return host


def pack_module(host, name):
    """A submodule of the pack as ComfyUI imported it, e.g. ``pack_module(host, "nodes.guidance_step")``."""
    return sys.modules[f"{host.pack_module_name}.{name}"]
