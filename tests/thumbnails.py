"""The template browser's thumbnails: ``workflows/<name>.jpg`` beside each ``workflows/<name>.json``.

ComfyUI's template browser (Workflow -> Browse Templates -> comfyui-asag) shows
``/api/workflow_templates/comfyui-asag/<name>.jpg`` on each card (frontend 1.27: custom-node templates
are ``mediaType image, mediaSubtype jpg``). No real output can be rendered here (no weights, no GPU), so
a thumbnail is the workflow's graph as the editor draws it: the file dropped onto the canvas, the
editor's chrome hidden (focus mode, no canvas info or menu), text drawn at every zoom, the view fitted
to the graph below a caption (the first line of the workflow's Note), the page scaled to ``WIDTH``
pixels and saved as a JPEG.

ipadapter_asag.json needs ComfyUI_IPAdapter_plus, which the test server does not have; for its picture
only, the page is given that pack's two node definitions (``wc.THIRD_PARTY_NODES``, as its code
declares them), so the thumbnail shows the nodes a user with the pack sees rather than red
placeholders. They are removed again afterwards.

Regenerate every thumbnail (starts ComfyUI and Chromium, about a minute)::

    python -m tests.thumbnails

``ASAG_UPDATE_THUMBNAILS=1 python -m pytest tests/test_e2e_browser.py`` does the same inside the
browser tests, which otherwise write the thumbnails to test-artifacts/e2e/thumbnails/ only. Both draw
with the newest frontend where the host serves it (0.22: 1.58.1, ASAG_NEWEST_FRONTEND_DIR), so run
them with the newest host: the workflows it alone can run show red missing nodes on older ones.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import e2e_harness as h  # noqa: E402
from tests import workflow_checks as wc  # noqa: E402
from tests import workflow_templates as wt  # noqa: E402

WIDTH = 800
QUALITY = 80
ARTIFACTS = os.path.join(h.ARTIFACTS, "thumbnails")

# the editor's chrome off for the picture, and text drawn at any zoom (level of detail off)
PICTURE_SETTINGS = {"Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False,
                    "LiteGraph.Canvas.MinFontSizeForLOD": 1}

SETTINGS_JS = """async (values) => {
    const setting = app.extensionManager.setting, old = {};
    for (const [key, value] of Object.entries(values)) { old[key] = setting.get(key); await setting.set(key, value); }
    return old;
}"""

# focus mode hides menus, tabs and side bars; the caption is the first line of the workflow's Note
SHOW_JS = """([on, caption]) => {
    app.extensionManager.focusMode = on;
    document.getElementById('asag-thumbnail-caption')?.remove();
    if (!on) return;
    const div = document.createElement('div');
    div.id = 'asag-thumbnail-caption';
    div.textContent = caption;
    Object.assign(div.style, {position: 'fixed', left: '0', right: '0', top: '0', zIndex: '2147483647',
        padding: '24px 40px', font: '600 60px/1.15 sans-serif', color: '#f2f2f2', background: '#181818',
        borderBottom: '4px solid #3f789e'});
    document.body.appendChild(div);
    return div.offsetHeight;
}"""

# the graph's extent on the canvas: every node with its title bar, every group
BOUNDS = """const title = LiteGraph.NODE_TITLE_HEIGHT;
    const box = (x, y, w, h, top) => [x, y - top, x + w, y + h];
    const boxes = [...app.graph.nodes.map(n => box(...n.pos, ...n.size, title)),
                   ...app.graph.groups.map(g => box(...g.pos, ...g.size, 0))];
    const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
    const x1 = Math.max(...boxes.map(b => b[2])), y1 = Math.max(...boxes.map(b => b[3]));"""
GRAPH_SIZE_JS = "() => { " + BOUNDS + " return [x1 - x0, y1 - y0]; }"
# the whole graph in the window below the caption, centred, MARGIN pixels clear of the edges
FIT_JS = "([top, margin]) => { " + BOUNDS + """
    const width = app.canvas.canvas.clientWidth, height = app.canvas.canvas.clientHeight;
    const ds = app.canvas.ds;
    ds.scale = Math.min((width - 2 * margin) / (x1 - x0), (height - top - 2 * margin) / (y1 - y0));
    ds.offset[0] = (width - (x1 - x0) * ds.scale) / 2 / ds.scale - x0;
    ds.offset[1] = (top + (height - top - (y1 - y0) * ds.scale) / 2) / ds.scale - y0;
    app.canvas.setDirty(true, true);
}"""
MARGIN = 24
CAPTION_HEIGHT = 170  # two lines of the caption, for the window's shape
ASPECT = (0.56, 0.8)  # the picture's height / width: the graph's, within these


def _window_for(pg) -> dict:
    """A window of the editor's width shaped like the graph (and the caption above it)."""
    width, height = pg.evaluate(GRAPH_SIZE_JS)
    window = h.VIEWPORT["width"]
    aspect = min(max((height / width) * 1.1 + CAPTION_HEIGHT / window, ASPECT[0]), ASPECT[1])
    return {"width": window, "height": round(window * aspect)}


def caption(wf) -> str:
    """The first line of the workflow's own Note (this pack's, ahead of a template's), up to its first
    colon, without Markdown's heading marks: what the workflow is."""
    notes = [n for n in wf["nodes"] if n["type"] in wc.NOTE_TYPES]
    notes.sort(key=lambda n: n.get("title") != wt.NOTE_TITLE)
    if not notes:
        return ""
    return notes[0]["widgets_values"][0].split("\n", 1)[0].split(":", 1)[0].strip().lstrip("#").strip().rstrip(".")


def pack_node_defs() -> dict:
    """ComfyUI_IPAdapter_plus's nodes in /object_info's format, from wc.THIRD_PARTY_NODES."""
    defs = {}
    for node_type, entry in wc.THIRD_PARTY_NODES.items():
        inputs = json.loads(json.dumps({k: entry[k] for k in ("required", "optional") if k in entry}))
        outputs = list(entry["outputs"])
        defs[node_type] = {
            "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": outputs, "output_is_list": [False] * len(outputs), "output_name": outputs,
            "name": node_type, "display_name": node_type, "description": "", "category": "ipadapter",
            "python_module": f"custom_nodes.{wc.THIRD_PARTY_PACK}", "output_node": False,
        }
    return defs


def _show_pack_nodes(pg, on: bool):
    if on:
        pg.evaluate("async (defs) => { for (const [id, d] of Object.entries(defs)) await app.registerNodeDef(id, d); }",
                    pack_node_defs())
    else:
        pg.evaluate("(ids) => { for (const id of ids) delete LiteGraph.registered_node_types[id]; }",
                    list(wc.THIRD_PARTY_NODES))


def make_thumbnail(pg, name: str, dest: str) -> str:
    """Draw workflows/``name`` in the editor and save its thumbnail as ``dest`` (a JPEG)."""
    from PIL import Image

    wf = wc.load(name)
    pack = name == wc.THIRD_PARTY_FILE
    if pack:
        _show_pack_nodes(pg, True)
    old = pg.evaluate(SETTINGS_JS, PICTURE_SETTINGS)
    try:
        h.drop_workflow(pg, wf, name)
        h.close_overlays(pg)
        flagged = h.flagged_nodes(pg)
        assert not flagged, f"{name}: the editor flags nodes {flagged}; the thumbnail would show them red"
        pg.set_viewport_size(_window_for(pg))
        top = pg.evaluate(SHOW_JS, [True, caption(wf)])
        pg.wait_for_timeout(400)  # the canvas takes the whole window
        pg.evaluate(FIT_JS, [top, MARGIN])
        pg.wait_for_timeout(800)
        png = pg.screenshot()
    finally:
        pg.evaluate(SHOW_JS, [False, ""])
        pg.set_viewport_size(h.VIEWPORT)
        pg.evaluate(SETTINGS_JS, old)
        if pack:
            _show_pack_nodes(pg, False)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    image.save(dest, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    return dest


def main() -> int:
    reason = h.skip_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    comfy_root = h.find_comfyui()
    base = tempfile.mkdtemp(prefix="asag-thumbnails-")
    h.prepare_base(base, comfy_root)

    def fail(message):
        raise RuntimeError(message)

    # the newest frontend where the host serves it (as the browser tests' last frontend)
    front = h.frontend_root(h.frontends(comfy_root)[-1])
    with h.comfyui_server(base, comfy_root, fail, frontend_root=front) as server:
        with h.editor(server, tempfile.mkdtemp(prefix="asag-thumbnails-profile-")) as pg:
            for name in wc.WORKFLOW_FILES:
                dest = make_thumbnail(pg, name, os.path.join(wc.WORKFLOWS_DIR, wc.thumbnail_name(name)))
                print(f"{os.path.relpath(dest, ROOT)}: {os.path.getsize(dest) // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
