"""End to end: the shipped workflows in the real ComfyUI graph editor, driven by headless Chromium.

ComfyUI and the editor are started by tests/e2e_harness.py (loopback only, the pack symlinked into a
throw-away base directory, placeholder files for every model the workflows name). In the frontend
ComfyUI serves:

* our three nodes are registered and the page starts without errors;
* ComfyUI serves every workflow as a template, with its thumbnail (``<name>.jpg``), and the template
  browser shows each thumbnail;
* a workflow with an unknown node type raises the missing-nodes dialog (proves the detection);
* every workflow in workflows/, image and video, is dropped onto the canvas as a file: no flagged
  (missing, red) nodes and no missing-nodes dialog (except ipadapter_asag.json, whose dialog and flags
  must be exactly the IPAdapter pack's nodes), no missing-models dialog, no toasts, no console errors,
  and the frontend saves back the same graph;
* the API prompts the frontend makes of them pass ComfyUI's own ``validate_prompt``;
* sd15_asag.json is queued from the frontend against a random-weight SD1.5-format checkpoint the
  test writes with ComfyUI's classes (64x64, 2 steps) and finishes with both images in /history.
* each workflow's thumbnail is made as tests/thumbnails.py makes it;
* each node's help (the selection toolbox's info button) shows its web/docs/<node>.md, image included;
* with the interface language switched to Chinese (Comfy.Locale = zh) a new node's title, an input's
  hover tooltip and the help page come from locales/zh and web/docs/<node>/zh.md.

Screenshots go to test-artifacts/e2e/; ``ASAG_UPDATE_SCREENSHOTS=1`` also rewrites
docs/screenshot_sd15_asag.png, ``ASAG_UPDATE_THUMBNAILS=1`` the workflows' .jpg thumbnails.
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
from tests.e2e_harness import (  # noqa: E402
    close_overlays,
    drop_workflow,
    flagged_nodes,
    get_json,
    is_missing_nodes_dialog,
    missing_node_types,
    open_dialogs,
    open_toasts,
    screenshot,
    serialized,
    tail,
)

DOCS_SCREENSHOT = os.path.join(ROOT, "docs", "screenshot_sd15_asag.png")
DOCS_DIR = os.path.join(ROOT, "web", "docs")

SKIP_REASON = h.skip_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]


def _fail(message):
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI on loopback, with the random SD1.5 checkpoint being written beside its start."""
    comfy_root = h.find_comfyui()
    base = str(tmp_path_factory.mktemp("comfyui-e2e"))
    h.prepare_base(base, comfy_root, skip_placeholders=(h.SD15_CKPT,))
    builder_log = os.path.join(base, "checkpoint_writer.log")
    builder = h.start_checkpoint_writer(os.path.join(base, "models", "checkpoints", h.SD15_CKPT), comfy_root,
                                        builder_log)
    try:
        with h.comfyui_server(base, comfy_root, _fail) as srv:
            srv.builder, srv.builder_log = builder, builder_log
            yield srv
    finally:
        h.stop(builder)
        os.makedirs(h.ARTIFACTS, exist_ok=True)
        shutil.copy(builder_log, h.ARTIFACTS)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with h.editor(server, str(tmp_path_factory.mktemp("chromium-profile"))) as pg:
        yield pg


# ------------------------------------------------------------------------------------- tests

def test_frontend_starts_with_our_nodes(server, page):
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
        page.locator(".p-dialog").get_by_text("comfyui-asag", exact=True).first.click()
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
    """A workflow with an unknown node type does raise the dialog this file looks for."""
    wf = wc.load("sd15_asag.json")
    fake = "ASAGNoSuchNodeForTheTest"
    wf["nodes"].append({"id": wf["last_node_id"] + 1, "type": fake, "pos": [0, -400], "size": [200, 60],
                        "flags": {}, "order": len(wf["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                        "properties": {"Node name for S&R": fake}, "widgets_values": []})
    wf["last_node_id"] += 1
    drop_workflow(page, wf, "fake_node.json")
    dialogs = open_dialogs(page)
    close_overlays(page)
    missing = [d for d in dialogs if is_missing_nodes_dialog(d)]
    assert len(missing) == 1, f"no missing-nodes dialog for {fake}: {dialogs}"
    assert missing_node_types(missing[0], [fake, *wc.OURS]) == {fake}, missing[0]


FRONTEND_PROMPTS: dict = {}


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_workflow_loads_in_the_editor(name, page):
    wf = wc.load(name)
    since = page.events.mark()
    drop_workflow(page, wf, name)
    dialogs, toasts = open_dialogs(page), open_toasts(page)
    screenshot(page, name[:-5])
    close_overlays(page)

    flagged = {node_type for _, node_type in flagged_nodes(page)}
    if name == wc.THIRD_PARTY_FILE:
        assert len(dialogs) == 1 and is_missing_nodes_dialog(dialogs[0]), dialogs
        listed = missing_node_types(dialogs[0], [*wc.THIRD_PARTY_NODES, *wc.OURS, *wc.EXPECTED_CORE])
        assert listed == set(wc.THIRD_PARTY_NODES), f"the dialog lists {sorted(listed)}:\n{dialogs[0]}"
        assert flagged == set(wc.THIRD_PARTY_NODES), f"flagged nodes: {sorted(flagged)}"
    else:
        assert not dialogs, f"{name} opened dialogs (missing nodes or models?):\n" + "\n---\n".join(dialogs)
        assert not flagged, f"{name}: the editor flags {sorted(flagged)}"
    assert not toasts, f"{name} raised toasts (validation?): {toasts}"
    problems = page.events.problems(since)
    assert not problems, f"{name}:\n" + "\n".join(problems)

    again = serialized(page)
    diff = wc.summary_diff(wc.graph_summary(again), wc.graph_summary(wf))
    assert not diff, f"the editor does not save {name} back unchanged:\n" + "\n".join(diff)
    if name != wc.THIRD_PARTY_FILE:
        FRONTEND_PROMPTS[name] = page.evaluate("async () => (await app.graphToPrompt()).output")


def _validate_in_comfyui(prompts: dict, base: str) -> list[str]:
    """ComfyUI's own validate_prompt on each prompt, with the test server's models and input folders."""
    from tests.comfy_host import start_host

    host = start_host()
    asyncio.run(host.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    import execution
    import folder_paths

    added = []
    old_input = folder_paths.get_input_directory()
    try:
        for folder in sorted(set(wc.MODEL_FILES.values())):
            if folder in folder_paths.folder_names_and_paths:
                path = os.path.join(base, "models", folder)
                folder_paths.add_model_folder_path(folder, path)
                added.append((folder, path))
        folder_paths.filename_list_cache.clear()
        folder_paths.set_input_directory(os.path.join(base, "input"))
        # the validator is live: a file name the server does not have is refused
        broken = json.loads(json.dumps(next(iter(prompts.values()))))
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
    """What the editor would queue for each workflow passes ComfyUI's validate_prompt (with the
    placeholder model files and the input image of the test server)."""
    expected = [n for n in wc.WORKFLOW_FILES if n != wc.THIRD_PARTY_FILE]
    missing = [n for n in expected if n not in FRONTEND_PROMPTS]
    assert not missing, f"no prompts from the editor for {missing} (their load test failed?)"
    # Playwright's sync API keeps an event loop on this thread; ComfyUI's coroutines get their own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        failures = pool.submit(_validate_in_comfyui, {n: FRONTEND_PROMPTS[n] for n in expected}, server.base).result()
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
def test_thumbnail(name, page):
    """The thumbnail of each workflow, made as tests/thumbnails.py makes it (written to workflows/ only
    with ASAG_UPDATE_THUMBNAILS=1): a JPEG of the graph within the size limits, nothing flagged."""
    since = page.events.mark()
    made = thumbnails.make_thumbnail(page, name, os.path.join(thumbnails.ARTIFACTS, wc.thumbnail_name(name)))
    if os.environ.get("ASAG_UPDATE_THUMBNAILS") == "1":
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


def test_chinese_interface(server, page):
    """Comfy.Locale = zh: a new ASAG node is titled from locales/zh, hovering its model input shows
    the Chinese tooltip, and the help page is web/docs/ASAG/zh.md."""
    zh = lc.load("zh", "nodeDefs.json")["ASAG"]
    since = page.events.mark()
    page.evaluate("async () => await app.extensionManager.setting.set('Comfy.Locale', 'zh')")
    try:
        page.wait_for_function("(title) => LiteGraph.registered_node_types.ASAG.title === title",
                               arg=zh["display_name"], timeout=30_000)
        close_overlays(page)
        node_id = page.evaluate(ADD_SELECTED_NODE, "ASAG")
        assert page.evaluate("(id) => app.graph.getNodeById(id).title", node_id) == zh["display_name"]
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
        page.evaluate("async () => await app.extensionManager.setting.set('Comfy.Locale', 'en')")
        page.wait_for_function("(title) => LiteGraph.registered_node_types.ASAG.title === title",
                               arg=lc.load("en", "nodeDefs.json")["ASAG"]["display_name"], timeout=30_000)
    problems = page.events.problems(since)
    assert not problems, "\n".join(problems)

