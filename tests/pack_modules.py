"""The pack's pure modules, imported without ComfyUI: the repository root is registered as the
package ``asag_pack`` (what ComfyUI's loader does under another name), so the modules' relative
imports (``from ..asag_core import ...``) resolve as they do in a host."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "asag_pack"


def pure(name: str):
    """``asag_pack.<name>``, e.g. ``pure("nodes.row_split")``."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{name}")
