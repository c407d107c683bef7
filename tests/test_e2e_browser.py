"""End to end: the shipped workflows in the real ComfyUI graph editor, driven by headless Chromium.

ComfyUI and the editor are started by tests/e2e_harness.py (loopback only, the pack symlinked into a
throw-away base directory, placeholder files for every model the workflows name). In the frontend
ComfyUI serves:

* our three nodes are registered and the page starts without errors;
* ComfyUI serves every workflow as a template, with its thumbnail (``<name>.jpg``), and the template
  browser shows each thumbnail;
* a workflow with an unknown node type is reported as missing (proves the detection);
* every workflow in workflows/, image and video, is dropped onto the canvas as a file: no flagged
  (missing, red) nodes and no missing-nodes notice (except ipadapter_asag.json, whose notice and flags
  must be exactly the IPAdapter pack's nodes, and a workflow whose nodes the host lacks), no
  missing-models dialog, no toasts, no console errors, and the frontend saves back the same graph
  (the template workflows: the same nodes, titles, places, modes and links);
* the API prompts the frontend makes of them pass ComfyUI's own ``validate_prompt`` (with empty
  placeholder model files named as in the workflows);
* dropped in, every node of every workflow opens clear of the sidebar, tab bar, toolbar and panels;
  1.58.1 fits each one opened from its template browser at the scale the static test computes, with
  no node title cut short;
* sd15_asag.json is queued from the frontend against a random-weight SD1.5-format checkpoint the
  test writes with ComfyUI's classes (64x64, 2 steps) and finishes with both images in /history.
* each workflow's thumbnail is made as tests/thumbnails.py makes it;
* each node's help (the selection toolbox's info button) shows its web/docs/<node>.md, image included;
* with the interface language switched to Chinese (Comfy.Locale = zh) a new node's title, an input's
  hover tooltip and the help page come from locales/zh and web/docs/<node>/zh.md.

Every test runs once per frontend: the host's pinned one (0.3.64: 1.27.10, 0.22: 1.43.18) and, on
hosts from 0.22 on, the newest on the registry (1.58.1, ASAG_NEWEST_FRONTEND_DIR, --front-end-root).
Where the frontends differ the tests assert each one's own behaviour: missing nodes are a dialog
(1.27), an error overlay (1.43) or a notification (1.58); 1.43 logs "ComfyApp graph accessed before
initialization" while starting; switched to Chinese on a blank start 1.27 translates the node titles,
1.43 keeps the English ones (the core's too) until a graph has been loaded, 1.58 does either; 1.58
fits a template opened from its browser to the window, the pinned ones open it at its saved view.
Workflows whose nodes a host lacks (their minimum ComfyUI is above it) must show exactly those as
missing there, and are validated on the host that has them.

Screenshots go to test-artifacts/e2e/; ``ASAG_UPDATE_SCREENSHOTS=1`` also rewrites
docs/screenshot_sd15_asag.png and docs/screenshot_wan22_14b_t2v_asag.png (1.58.1's template browser),
``ASAG_UPDATE_THUMBNAILS=1`` the workflows' .jpg thumbnails (from the last frontend).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import e2e_harness as h  # noqa: E402
from tests import locale_checks as lc  # noqa: E402
from tests import thumbnails  # noqa: E402
from tests import workflow_checks as wc  # noqa: E402
from tests import workflow_notes as wn  # noqa: E402
from tests import workflow_templates as wt  # noqa: E402
from tests.e2e_harness import (  # noqa: E402
    close_overlays,
    drop_workflow,
    flagged_nodes,
    get_json,
    missing_node_types,
    open_dialogs,
    open_toasts,
    screenshot,
    serialized,
    tail,
)

DOCS_SCREENSHOT = os.path.join(ROOT, "docs", "screenshot_sd15_asag.png")
# the README's picture of a workflow as it opens from the template browser of the newest frontend
README_WORKFLOW = "wan22_14b_t2v_asag.json"
WORKFLOW_SCREENSHOT = os.path.join(ROOT, "docs", "screenshot_wan22_14b_t2v_asag.png")
DOCS_DIR = os.path.join(ROOT, "web", "docs")

SKIP_REASON = h.skip_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]


def _fail(message):
    pytest.fail(message, pytrace=False)


FRONTENDS = h.frontends(h.find_comfyui())


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    """ComfyUI on loopback with its pinned frontend, or (hosts >= 0.22) the newest one on the registry
    (--front-end-root), with the random SD1.5 checkpoint being written beside its start."""
    comfy_root = h.find_comfyui()
    try:
        front = h.frontend_root(request.param)
    except FileNotFoundError as e:
        _fail(str(e))
    base = str(tmp_path_factory.mktemp("comfyui-e2e"))
    h.prepare_base(base, comfy_root, skip_placeholders=(h.SD15_CKPT,))
    builder_log = os.path.join(base, "checkpoint_writer.log")
    builder = h.start_checkpoint_writer(os.path.join(base, "models", "checkpoints", h.SD15_CKPT), comfy_root,
                                        builder_log)
    try:
        with h.comfyui_server(base, comfy_root, _fail, frontend_root=front) as srv:
            srv.builder, srv.builder_log = builder, builder_log
            srv.frontend, srv.comfy_root = request.param, comfy_root
            srv.host_version = h.comfyui_version(comfy_root)
            srv.node_types = set(get_json(srv.url + "/object_info"))
            yield srv
    finally:
        h.stop(builder)
        os.makedirs(h.ARTIFACTS, exist_ok=True)
        shutil.copy(builder_log, h.ARTIFACTS)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with h.editor(server, str(tmp_path_factory.mktemp("chromium-profile"))) as pg:
        yield pg


def runs_here(server, name) -> bool:
    """Can this host run workflow ``name``: is it at or above the version the workflow needs?"""
    return server.host_version >= wn.needs_comfyui(name)


def lacking(server, wf) -> set:
    """The node types of ``wf`` (subgraphs included) this host does not have."""
    return wc.node_types(wf) - server.node_types


# ------------------------------------------------------------------------------------- tests

def test_frontend_starts_with_our_nodes(server, page):
    """The frontend asked for is the one serving, our nodes are registered, the page starts clean
    (1.43.18's own start-up error is tolerated before the app is ready, see e2e_harness)."""
    want = h.pinned_frontend(server.comfy_root) if server.frontend == "pinned" else h.NEWEST_FRONTEND
    assert ".".join(map(str, page.frontend)) == want
    info = get_json(server.url + "/object_info")
    for node_id in wc.OURS:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["python_module"] == "custom_nodes.comfyui-asag", "loaded through the symlinked pack"
    registered = page.evaluate("(ids) => ids.filter(t => t in LiteGraph.registered_node_types)", list(wc.OURS))
    assert registered == list(wc.OURS), "the frontend did not register all of this pack's nodes"
    assert not page.events.problems(0), "errors while the editor started:\n" + "\n".join(page.events.problems(0))
    assert not page.startup_dialogs, f"dialogs at start: {page.startup_dialogs}"


def test_comfyui_serves_the_workflows_as_templates(server):
    """ComfyUI offers a pack's workflows/ folder in its template browser (under the pack's name)."""
    templates = get_json(server.url + "/api/workflow_templates")
    assert sorted(templates.get("comfyui-asag", [])) == sorted(n[:-5] for n in wc.WORKFLOW_FILES), templates
    for name in wc.WORKFLOW_FILES:
        assert get_json(f"{server.url}/api/workflow_templates/comfyui-asag/{name}") == wc.load(name), name
        jpg = wc.thumbnail_name(name)
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/comfyui-asag/{jpg}", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/jpeg", (jpg, r.headers["Content-Type"])
            with open(os.path.join(wc.WORKFLOWS_DIR, jpg), "rb") as f:
                assert r.read() == f.read(), jpg


CARD_IMAGE = """(name) => {
    const card = document.querySelector(`[data-testid="template-workflow-${name}"]`);
    if (!card) return null;
    card.scrollIntoView({block: 'center'});
    const img = card.querySelector('img');
    return img && img.complete ? img.naturalWidth : 0;
}"""


def test_template_browser_shows_the_thumbnails(server, page):
    """Workflow -> Browse Templates -> comfyui-asag: a card for every workflow, each showing its thumbnail."""
    since = page.events.mark()
    page.evaluate("async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
    shown = {}
    try:
        page.locator(".p-dialog, [role=dialog]").get_by_text("comfyui-asag", exact=True).first.click()
        deadline = time.monotonic() + 60
        while len(shown) < len(wc.WORKFLOW_FILES) and time.monotonic() < deadline:
            for name in wc.WORKFLOW_FILES:  # the grid adds cards as it scrolls; images load as they come into view
                width = page.evaluate(CARD_IMAGE, name[:-5])
                if width:
                    shown[name] = width
            page.wait_for_timeout(300)
        screenshot(page, "template_browser")
    finally:
        close_overlays(page)
    missing = sorted(set(wc.WORKFLOW_FILES) - set(shown))
    assert not missing, f"no thumbnail shown for {missing}"
    assert set(shown.values()) == {thumbnails.WIDTH}, shown
    problems = page.events.problems(since)
    assert not problems, "\n".join(problems)


def test_sd15_screenshot(page):
    """The first workflow a fresh editor opens: the picture for the README."""
    drop_workflow(page, wc.load("sd15_asag.json"), "sd15_asag.json")
    close_overlays(page)
    page.wait_for_timeout(500)
    path = screenshot(page, "sd15_asag_loaded")
    assert os.path.getsize(path) > 20_000
    if os.environ.get("ASAG_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS_SCREENSHOT)


def test_missing_node_detection_works(page):
    """A workflow with an unknown node type is reported as each frontend reports it (1.27 a dialog,
    1.43 an error overlay, 1.58 a notification, MISSING_NOTICE_ROLE) and drawn flagged."""
    wf = wc.load("sd15_asag.json")
    fake = "ASAGNoSuchNodeForTheTest"
    wf["nodes"].append({"id": wf["last_node_id"] + 1, "type": fake, "pos": [0, -400], "size": [200, 60],
                        "flags": {}, "order": len(wf["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                        "properties": {"Node name for S&R": fake}, "widgets_values": []})
    wf["last_node_id"] += 1
    drop_workflow(page, wf, "fake_node.json")
    notices = h.missing_node_notices(page)
    flagged = {node_type for _, node_type in flagged_nodes(page)}
    close_overlays(page)
    assert [kind for kind, _ in notices] == [h.MISSING_NOTICE_ROLE[page.frontend[:2]]], notices
    if page.frontend[:2] != (1, 43):  # 1.43's overlay only counts them ("Some nodes are missing")
        assert missing_node_types(notices[0][1], [fake, *wc.OURS]) == {fake}, notices
    assert flagged == {fake}


FRONTEND_PROMPTS: dict = {}


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_workflow_loads_in_the_editor(name, server, page):
    """Dropped onto the canvas: no flagged node and no notice, except the third-party pack's nodes
    (ipadapter) and, on a host below the workflow's minimum ComfyUI, exactly the node types that host
    lacks; no missing-models dialog, no toasts, no errors; saved back unchanged; its prompt kept for
    the validation test where the host can run it."""
    wf = wc.load(name)
    since = page.events.mark()
    drop_workflow(page, wf, name)
    notices, dialogs, toasts = h.missing_node_notices(page), open_dialogs(page), open_toasts(page)
    screenshot(page, f"{server.frontend}_{name[:-5]}")
    flagged = {node_type for _, node_type in flagged_nodes(page)}
    close_overlays(page)

    missing = set(wc.THIRD_PARTY_NODES) if name == wc.THIRD_PARTY_FILE else lacking(server, wf)
    root_types = {n["type"] for n in wf["nodes"]}
    if missing:
        assert [kind for kind, _ in notices] == [h.MISSING_NOTICE_ROLE[page.frontend[:2]]], notices
        assert flagged == missing & root_types, f"flagged nodes: {sorted(flagged)}, lacking {sorted(missing)}"
        assert not runs_here(server, name) or name == wc.THIRD_PARTY_FILE, f"{name} needs {sorted(missing)}"
    else:
        shown = dialogs + [text for _, text in notices]
        assert not shown, f"{name} opened dialogs:\n" + "\n---\n".join(shown)
        assert not flagged, f"{name}: the editor flags {sorted(flagged)}"
    assert not toasts, f"{name} raised toasts (validation?): {toasts}"
    problems = page.events.problems(since)
    assert not problems, f"{name}:\n" + "\n".join(problems)

    again = serialized(page)
    keys = wc.TEMPLATE_KEYS if name in wc.TEMPLATE_WORKFLOWS else None
    if missing and name != wc.THIRD_PARTY_FILE:
        # 1.27 marks the model folders this host lacks and re-fits groups around nodes it cannot draw
        keys = ("type", "title", "mode")
    groups = keys != ("type", "title", "mode")
    diff = wc.summary_diff(wc.graph_summary(again), wc.graph_summary(_as_saved_by(page.frontend, wf)), keys,
                           groups=groups)
    assert not diff, f"the editor does not save {name} back unchanged:\n" + "\n".join(diff)
    if not missing and runs_here(server, name):
        FRONTEND_PROMPTS[(server.frontend, name)] = page.evaluate("async () => (await app.graphToPrompt()).output")


def _as_saved_by(frontend, wf) -> dict:
    """``wf`` as ``frontend`` saves it back. A subgraph node whose input feeds a widget inside (the
    ablation branches' seed) gets that widget on the node: 1.27 and 1.58 save its value in the node's
    widgets_values, 1.43 saves none."""
    if frontend[:2] != (1, 43):
        return wf
    wf = json.loads(json.dumps(wf))
    for node in wf["nodes"]:
        if node["type"] in wt.subgraph_ids(wf):
            node["widgets_values"] = []
    return wf


def _validate_in_comfyui(prompts: dict, base: str) -> list[str]:
    """ComfyUI's own validate_prompt on each prompt, with the test server's models and input folders."""
    from tests.comfy_host import start_host

    host = start_host()
    wc.load_core_nodes(host)
    import execution
    import folder_paths

    added = []
    old_input = folder_paths.get_input_directory()
    try:
        for folder in sorted({folder for _, folder in h.model_placeholders()}):
            if folder in folder_paths.folder_names_and_paths:
                path = os.path.join(base, "models", folder)
                folder_paths.add_model_folder_path(folder, path)
                added.append((folder, path))
        folder_paths.filename_list_cache.clear()
        folder_paths.set_input_directory(os.path.join(base, "input"))
        # the validator is live: a file name the server does not have is refused
        broken = json.loads(json.dumps(prompts["sd15_asag.json"]))
        for node in broken.values():
            if node["class_type"] == "CheckpointLoaderSimple":
                node["inputs"]["ckpt_name"] = "no-such-checkpoint.safetensors"
        failures = []
        if asyncio.run(execution.validate_prompt("e2e", broken, None))[0]:
            failures.append("validate_prompt accepted a checkpoint that does not exist")
        for name, prompt in prompts.items():
            valid, error, _, node_errors = asyncio.run(execution.validate_prompt("e2e", prompt, None))
            if not valid:
                failures.append(f"{name}: {error} {json.dumps(node_errors)[:1500]}")
        return failures
    finally:
        for folder, path in added:
            folder_paths.folder_names_and_paths[folder][0].remove(path)
        folder_paths.filename_list_cache.clear()
        folder_paths.set_input_directory(old_input)


def test_frontend_prompts_pass_comfyui_validation(server, page):
    """What the editor would queue for each workflow this host can run passes ComfyUI's validate_prompt
    (with the placeholder model files and input images of the test server); the workflows that need a
    later ComfyUI than this host are validated on the host that has it."""
    expected = [n for n in wc.WORKFLOW_FILES if n != wc.THIRD_PARTY_FILE and runs_here(server, n)]
    assert "sd15_asag.json" in expected
    missing = [n for n in expected if (server.frontend, n) not in FRONTEND_PROMPTS]
    assert not missing, f"no prompts from the editor for {missing} (their load test failed?)"
    # Playwright's sync API keeps an event loop on this thread; ComfyUI's coroutines get their own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        prompts = {n: FRONTEND_PROMPTS[(server.frontend, n)] for n in expected}
        failures = pool.submit(_validate_in_comfyui, prompts, server.base).result()
    assert not failures, "\n".join(failures)


def test_sd15_runs_from_the_editor(server, page):
    """Queue sd15_asag.json from the editor (64x64, 2 steps) on the random checkpoint: both images saved."""
    try:
        rc = server.builder.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("writing the random SD1.5 checkpoint took too long", pytrace=False)
    assert rc == 0, f"writing the random SD1.5 checkpoint failed:\n{tail(server.builder_log)}"

    wf = wc.load("sd15_asag.json")
    drop_workflow(page, wf, "sd15_asag.json")
    close_overlays(page)
    since = page.events.mark()
    page.evaluate("""() => {
        const set = (node, name, value) => { node.widgets.find(w => w.name === name).value = value; };
        for (const node of app.graph.nodes) {
            if (node.type === "EmptyLatentImage") { set(node, "width", 64); set(node, "height", 64); }
            if (node.type === "KSampler") set(node, "steps", 2);
        }
    }""")
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST",
                              timeout=60_000) as answer:
        page.evaluate("() => { app.queuePrompt(0, 1); }")
    response = answer.value
    body = response.json()
    assert response.status == 200 and not body.get("node_errors"), f"the server refused the prompt: {body}"
    sent = response.request.post_data_json["prompt"]
    classes = sorted(v["class_type"] for v in sent.values())
    assert classes.count("KSampler") == 2 and "ASAG" in classes, classes
    assert all(v["inputs"]["steps"] == 2 for v in sent.values() if v["class_type"] == "KSampler")

    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 240
    entry = None
    while time.monotonic() < deadline:
        history = get_json(f"{server.url}/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
            break
        if server.proc.poll() is not None:
            pytest.fail(f"ComfyUI died while running:\n{tail(server.log)}", pytrace=False)
        time.sleep(1)
    assert entry is not None, f"the prompt did not finish in time:\n{tail(server.log)}"
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{tail(server.log)}"
    saves = {str(n["id"]): wc.widget(n, "filename_prefix") for n in wc.nodes_of(wf, "SaveImage")}
    for node_id, prefix in saves.items():
        images = entry["outputs"].get(node_id, {}).get("images", [])
        assert len(images) == 1, f"SaveImage {node_id} ({prefix}) produced {images}"
        image = images[0]
        assert os.path.isfile(os.path.join(server.base, "output", image["subfolder"], image["filename"]))
        assert f"{image['subfolder']}/{image['filename']}".startswith(prefix)
    # the workflow's ASAG node took its batched call: the separate pass says so in the log once per run
    with open(server.log, encoding="utf-8", errors="replace") as log:
        assert "separate model pass" not in log.read(), "sd15_asag.json ran ASAG's separate pass"
    page.wait_for_timeout(500)
    screenshot(page, "sd15_asag_after_run")
    problems = page.events.problems(since)
    assert not problems, "errors in the editor while running:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_thumbnail(name, server, page):
    """The thumbnail of each workflow, made as tests/thumbnails.py makes it (written to workflows/ only
    with ASAG_UPDATE_THUMBNAILS=1): a JPEG of the graph within the size limits, nothing flagged. A
    workflow whose nodes this host lacks shows them red here: its picture is drawn on a host that has them."""
    if name != wc.THIRD_PARTY_FILE and lacking(server, wc.load(name)):
        assert not runs_here(server, name)
        assert os.path.isfile(os.path.join(wc.WORKFLOWS_DIR, wc.thumbnail_name(name)))
        return
    since = page.events.mark()
    made = thumbnails.make_thumbnail(page, name, os.path.join(thumbnails.ARTIFACTS, server.frontend,
                                                              wc.thumbnail_name(name)))
    if os.environ.get("ASAG_UPDATE_THUMBNAILS") == "1" and server.frontend == FRONTENDS[-1]:
        shutil.copy(made, os.path.join(wc.WORKFLOWS_DIR, wc.thumbnail_name(name)))
    with open(made, "rb") as f:
        data = f.read()
    width, height = wc.jpeg_size(data)
    assert width == thumbnails.WIDTH and wc.THUMBNAIL_MIN_BYTES <= len(data) <= wc.THUMBNAIL_MAX_BYTES, (
        width, height, len(data))
    problems = page.events.problems(since)
    assert not problems, f"{name}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------- node docs and languages

ADD_SELECTED_NODE = """(type) => {
    app.graph.clear();
    const node = LiteGraph.createNode(type);
    node.pos = [300, 250];
    app.graph.add(node);
    app.canvas.centerOnNode(node);  // the selection toolbox floats above it, clear of the menu bar
    app.canvas.deselectAll();
    app.canvas.selectNode(node);
    app.canvas.setDirty(true, true);
    return node.id;
}"""


def _doc_headings(path):
    with open(path, encoding="utf-8") as f:
        return [line.lstrip("#").strip() for line in f if line.startswith("#")]


def open_help(pg, node_type):
    """Select a new ``node_type`` node and press the selection toolbox's info button, as a user does."""
    close_overlays(pg)
    pg.evaluate(ADD_SELECTED_NODE, node_type)
    button = pg.locator('[data-testid="info-button"]')
    button.wait_for(state="visible", timeout=10_000)
    button.click()
    content = pg.locator(".node-help-content")
    content.wait_for(state="visible", timeout=10_000)
    return content


def _help_shows(pg, content, headings, image):
    """Wait until the help page shows every heading; return its text and the state of ``image``."""
    pg.wait_for_function(
        """([el, headings]) => headings.every(h => el.innerText.includes(h))""",
        arg=[content.element_handle(), headings], timeout=15_000)
    img = content.locator(f'img[src$="/extensions/comfyui-asag/docs/{image}"]')
    img.wait_for(state="attached", timeout=5_000)
    pg.wait_for_function("(el) => el.complete", arg=img.element_handle(), timeout=10_000)
    return content.inner_text(), img.evaluate("el => el.naturalWidth")


def _close_help(pg):
    """Close the sidebar the help page opened in (it would cover the next node's toolbox)."""
    pg.evaluate("""() => {
        const tabs = app.extensionManager.sidebarTab;
        if (tabs.activeSidebarTabId) tabs.toggleSidebarTab(tabs.activeSidebarTabId);
        app.graph.clear();
    }""")
    pg.locator(".node-help-content").wait_for(state="detached", timeout=10_000)
    close_overlays(pg)


@pytest.mark.parametrize("node_type", wc.OURS)
def test_node_docs_in_the_help_panel(server, page, node_type):
    """The help panel shows web/docs/<node>.md (every heading of it), and its relative image loads."""
    since = page.events.mark()
    headings = _doc_headings(os.path.join(DOCS_DIR, f"{node_type}.md"))
    assert "Inputs" in headings and "Recommended settings" in headings
    content = open_help(page, node_type)
    text, image_width = _help_shows(page, content, headings, "asag_in_a_graph.png")
    screenshot(page, f"help_{node_type}")
    _close_help(page)
    assert image_width > 0, "the doc's image did not load from its relative path"
    for name in wc.OUR_NODES[node_type]["required"]:
        assert name in text, f"the help page does not mention the input {name!r}"
    problems = page.events.problems(since)
    assert not problems, "\n".join(problems)


def _slot_client_position(pg, node_id, slot):
    """Where input ``slot`` of node ``node_id`` is on the screen."""
    return pg.evaluate("""([id, slot]) => {
        const node = app.graph.getNodeById(id);
        const [x, y] = app.canvas.ds.convertOffsetToCanvas(node.getConnectionPos(true, slot));
        const rect = app.canvas.canvas.getBoundingClientRect();
        return [rect.left + x, rect.top + y];
    }""", [node_id, slot])


# ------------------------------------------------------------------------------------- readable where users open them

NODE_CORNERS_COVERED = """(ids) => {
    const canvas = app.canvas.canvas, rect = canvas.getBoundingClientRect(), ds = app.canvas.ds;
    const title = LiteGraph.NODE_TITLE_HEIGHT, out = [];
    for (const node of app.graph.nodes) {
        if (!ids.includes(String(node.id))) continue;
        const [x, y] = node.pos, [w, h] = node.size;
        for (const [px, py] of [[x, y - title], [x + w, y - title], [x, y + h], [x + w, y + h]]) {
            const sx = rect.left + (px + ds.offset[0]) * ds.scale, sy = rect.top + (py + ds.offset[1]) * ds.scale;
            const top = document.elementFromPoint(sx, sy);
            if (top !== canvas) out.push([String(node.id), node.type, Math.round(sx), Math.round(sy),
                                          top ? (top.tagName + '.' + String(top.className).slice(0, 60)) : 'outside']);
        }
    }
    return out;
}"""


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_dropped_file_opens_clear_of_the_interface(name, server, page):
    """Dropped in, a workflow opens at its saved view: every corner of every node (title bar included)
    is on the canvas, under no sidebar, tab bar, toolbar or panel."""
    wf = wc.load(name)
    drop_workflow(page, wf, name)
    close_overlays(page)
    page.wait_for_timeout(300)
    covered = page.evaluate(NODE_CORNERS_COVERED, [str(n["id"]) for n in wf["nodes"]])
    assert not covered, f"{name}: node corners under the interface: {covered}"


TITLES_CUT = """(items) => {
    const ctx = document.createElement('canvas').getContext('2d'), out = [];
    for (const [type, title, width] of items) {
        const probe = LiteGraph.createNode(type);
        if (!probe) continue;
        ctx.font = probe.titleFontStyle;
        const text = title ?? probe.title, room = width - LiteGraph.NODE_TITLE_HEIGHT * 2;
        const wide = ctx.measureText(text).width;
        if (wide > room) out.push([type, text, width, Math.round(wide)]);
    }
    return out;
}"""


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_newest_frontend_fits_it_readable(name, server, page):
    """Frontend 1.58.1, opened from the template browser: fitted at the scale wt.fit_scale predicts (at
    least 0.6 outside workflow_notes.OPENS_SMALL), and no node title, inside subgraphs too, cut
    short at its saved width. The pinned frontends (1.27.10, 1.43.18) open a template at its saved view
    instead, which the test above checks."""
    wf = wc.load(name)
    if page.frontend < (1, 58):
        drop_workflow(page, wf, name)
        close_overlays(page)
        ds = page.evaluate("() => [app.canvas.ds.scale, ...app.canvas.ds.offset]")
        saved = wf["extra"]["ds"]
        assert ds == pytest.approx([saved["scale"], *saved["offset"]], abs=0.01), "the saved view"
        return
    page.evaluate("async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
    page.locator("[role=dialog]").get_by_text("comfyui-asag", exact=True).first.click()
    card = page.locator(f'[data-testid="template-workflow-{name[:-5]}"]')
    card.scroll_into_view_if_needed()
    card.click()
    page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(wf["nodes"]), timeout=30_000)
    page.wait_for_timeout(800)
    scale = page.evaluate("() => app.canvas.ds.scale")
    shot = screenshot(page, f"{server.frontend}_template_{name[:-5]}")
    if name == README_WORKFLOW and os.environ.get("ASAG_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, WORKFLOW_SCREENSHOT)
    close_overlays(page)
    assert scale == pytest.approx(wt.fit_scale(wf), abs=0.005), "the fit the static test computes"
    items = [[n["type"], n.get("title"), n["size"][0]] for n in wt.all_nodes(wf)
             if n["type"] in server.node_types and n["type"] not in wc.NOTE_TYPES]
    cut = page.evaluate(TITLES_CUT, items)
    assert not cut, f"{name}: titles cut short (type, title, width, text width): {cut}"


@pytest.fixture
def fresh_page(server, page, tmp_path_factory):
    """The editor in a browser of its own with a new profile: a blank start, no workflow restored."""
    context = h.browser_context(page.playwright, server, str(tmp_path_factory.mktemp("chromium-fresh")))
    try:
        yield h.open_page(context, server, context.pages[0] if context.pages else None)
    finally:
        context.close()


def _set_locale_and_read_titles(page, locale, expect_change):
    """Switch Comfy.Locale; wait (where the titles are to change) for the node definitions to be
    registered again; return the registered titles of ASAG and the core KSampler."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = page.evaluate("() => LiteGraph.registered_node_types.KSampler.title")
    page.evaluate("async (l) => await app.extensionManager.setting.set('Comfy.Locale', l)", locale)
    try:
        page.wait_for_function("(t) => LiteGraph.registered_node_types.KSampler.title !== t", arg=before,
                               timeout=20_000 if expect_change else 5_000)
    except PlaywrightTimeout:
        pass
    return page.evaluate("() => ['ASAG', 'KSampler'].map(t => LiteGraph.registered_node_types[t].title)")


def test_chinese_interface(server, fresh_page):
    """Comfy.Locale = zh: the node titles as each version shows them, a new ASAG node's title, the
    Chinese tooltip of its model input, and the help page web/docs/ASAG/zh.md.

    Titles differ by version and timing. Switched to Chinese on a blank start, 1.27 registers the
    node titles again in Chinese (ours from locales/zh, the core KSampler too); 1.43 and 1.58 were
    seen doing both (translated within seconds, or still English after 5 s). Whichever happens, ours
    must follow the core's: Chinese exactly when KSampler is. Once a graph has been loaded in the
    tab, 1.43 translates them too."""
    zh = lc.load("zh", "nodeDefs.json")["ASAG"]
    en = lc.load("en", "nodeDefs.json")["ASAG"]
    page = fresh_page
    since = page.events.mark()
    if page.frontend < (1, 58):
        must_translate = page.frontend < (1, 43)
        titles = _set_locale_and_read_titles(page, "zh", must_translate)
        translated = titles[1] != "KSampler"
        want = zh["display_name"] if translated else en["display_name"]
        assert titles[0] == want and (translated or not must_translate), titles
        assert _set_locale_and_read_titles(page, "en", translated) == [en["display_name"], "KSampler"]
        drop_workflow(page, wc.load("sd15_asag.json"), "sd15_asag.json")
        close_overlays(page)
    translated = True
    try:
        titles = _set_locale_and_read_titles(page, "zh", True)
        translated = titles[1] != "KSampler"
        title = zh["display_name"] if translated else en["display_name"]
        assert titles[0] == title and (translated or page.frontend >= (1, 58)), titles
        close_overlays(page)
        node_id = page.evaluate(ADD_SELECTED_NODE, "ASAG")
        assert page.evaluate("(id) => app.graph.getNodeById(id).title", node_id) == title
        page.evaluate("() => app.canvas.deselectAll()")
        x, y = _slot_client_position(page, node_id, 0)
        page.mouse.move(x - 40, y + 40)
        page.mouse.move(x + 2, y)
        tooltip = page.locator(".node-tooltip")
        tooltip.wait_for(state="visible", timeout=10_000)
        assert tooltip.inner_text().strip() == zh["inputs"]["model"]["tooltip"]
        screenshot(page, "zh_tooltip")

        content = open_help(page, "ASAG")
        headings = _doc_headings(os.path.join(DOCS_DIR, "ASAG", "zh.md"))
        _, image_width = _help_shows(page, content, headings, "asag_in_a_graph.png")
        screenshot(page, "help_ASAG_zh")
        assert image_width > 0
        _close_help(page)
    finally:
        titles = _set_locale_and_read_titles(page, "en", translated)
    assert titles == [en["display_name"], "KSampler"], "back in English"
    problems = page.events.problems(since)
    assert not problems, "\n".join(problems)
