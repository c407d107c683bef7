"""The help-panel pages in web/docs (what the frontend shows for each node; the browser test opens them).

The frontend asks for ``/extensions/<pack>/docs/<node>/<locale>.md``, then ``docs/<node>.md``, and
resolves a relative image against ``/extensions/<pack>/docs/`` whichever of the two it shows.
"""

from __future__ import annotations

import os
import re

import pytest

from tests import workflow_checks as wc

DOCS = os.path.join(wc.ROOT, "web", "docs")
PAGES = [(node, os.path.join(DOCS, f"{node}.md")) for node in wc.OURS]
PAGES += [(node, os.path.join(DOCS, node, "zh.md")) for node in wc.OURS]


def test_the_pack_serves_web_docs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("asag_pack_root", os.path.join(wc.ROOT, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the top-level __init__ imports no ComfyUI
    assert os.path.normpath(os.path.join(wc.ROOT, module.WEB_DIRECTORY, "docs")) == DOCS


@pytest.mark.parametrize("node,path", PAGES, ids=[os.path.relpath(p, DOCS) for _, p in PAGES])
def test_every_node_page_names_every_input_and_its_images_exist(node, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for name in wc.OUR_NODES[node]["required"]:
        assert re.search(rf"\b{re.escape(name)}\b", text), f"{path} does not describe the input {name!r}"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images, f"{path} has no image"
    for image in images:
        assert "/" not in image, f"{image}: the frontend resolves images against docs/ itself, use a bare name"
        assert os.path.isfile(os.path.join(DOCS, image)), image
    assert "docs/quality.md" in text, "the page should point to the pack's own measurements"
