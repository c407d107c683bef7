"""End to end: the shipped workflows in the real ComfyUI graph editor, driven by headless Chromium.

Starts ComfyUI (``main.py --cpu``) on a free port with a throw-away base directory whose
custom_nodes/comfyui-asag is a symlink to this repository, so ComfyUI's own loader loads the pack.
Then, in the frontend ComfyUI serves:

* our three nodes are registered and the page starts without errors;
* a workflow with an unknown node type raises the missing-nodes dialog (proves the detection);
* every workflow in workflows/ is dropped onto the canvas as a file: no missing-nodes dialog (except
  ipadapter_asag.json, whose dialog must list exactly the IPAdapter pack's nodes), no missing-models
  dialog (placeholder files under the MODEL_FILES names and folders), no toasts, no console errors,
  and the frontend saves back the same graph;
* the API prompts the frontend makes of them pass ComfyUI's own ``validate_prompt``;
* sd15_asag.json is queued from the frontend against a random-weight SD1.5-format checkpoint the
  test writes with ComfyUI's classes (64x64, 2 steps) and finishes with both images in /history.
* each node's help (the selection toolbox's info button) shows its web/docs/<node>.md, image included;
* with the interface language switched to Chinese (Comfy.Locale = zh) a new node's title, an input's
  hover tooltip and the help page come from locales/zh and web/docs/<node>/zh.md.

Screenshots go to test-artifacts/e2e/; ``ASAG_UPDATE_SCREENSHOTS=1`` also rewrites
docs/screenshot_sd15_asag.png.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import locale_checks as lc  # noqa: E402
from tests import workflow_checks as wc  # noqa: E402
from tests.comfy_host import HOW_TO, find_comfyui  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = os.path.join(ROOT, "test-artifacts", "e2e")
DOCS_SCREENSHOT = os.path.join(ROOT, "docs", "screenshot_sd15_asag.png")
SD15_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
VIEWPORT = {"width": 1600, "height": 1000}

# Frontend 1.27.10 on a fresh profile throws this once while starting, with no custom nodes at
# all too (reproduced with --disable-all-custom-nodes): not ours, tolerated only before the app is ready.
STARTUP_PAGE_ERRORS = ("Cannot read properties of undefined (reading 'id')",)
# Local 404s of a fresh user directory (no user.css, no saved workflows or templates yet)
EXPECTED_LOCAL_404 = ("/user.css", "/api/userdata/user.css", "/api/userdata?dir=workflows",
                      "/api/userdata?dir=subgraphs", "/api/userdata/comfy.templates.json",
                      # the help panel asks for docs/<node>/<locale>.md first, then docs/<node>.md
                      *(f"/extensions/comfyui-asag/docs/{node}/en.md" for node in wc.OURS))
DOCS_DIR = os.path.join(ROOT, "web", "docs")


def _skip_reason():
    if find_comfyui() is None:
        return HOW_TO
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (apt-get install -y chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    return None


SKIP_REASON = _skip_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]


# ------------------------------------------------------------------------------------- the random SD1.5 checkpoint

def write_random_sd15_checkpoint(path: str) -> None:
    """A loadable SD1.5-format checkpoint with random weights (fp16), built with ComfyUI's classes.

    SD1.5 detection needs model_channels 320 and context_dim 768, so the U-Net keeps those and is cut
    to one level (one res block, one transformer each) plus the middle block ASAG perturbs; the CLIP-L
    text encoder and the VAE have fixed layouts in ComfyUI's loader and are full size. comfy.ops leave
    weights uninitialised, so every parameter is set here. Runs in a child process (imports ComfyUI).
    """
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16
    cpu = torch.device("cpu")

    def initialise(module):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif p.ndim == 1:
                    p.fill_(1.0)  # norm scales
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

    unet_config = {
        "context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False, "adm_in_channels": None,
        "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1],
        "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
        "transformer_depth_middle": 1, "use_spatial_transformer": True, "legacy": False, "image_size": 32,
        "num_heads": 8, "num_head_channels": -1, "use_checkpoint": False,
    }
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=cpu)
    initialise(model.diffusion_model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    clip = comfy.sd.CLIP(model_config.clip_target(), model_options={"dtype": dtype, "initial_device": cpu})
    initialise(clip.cond_stage_model)
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    autoencoder = AutoencoderKL(ddconfig=ddconfig, embed_dim=4).to(dtype)
    initialise(autoencoder)
    vae = comfy.sd.VAE(sd=autoencoder.state_dict(), dtype=dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    comfy.sd.save_checkpoint(path + ".part", patcher, clip, vae)
    os.replace(path + ".part", path)


def _child_main(argv):
    """``python tests/test_e2e_browser.py --write-sd15-checkpoint PATH COMFYUI_ROOT``"""
    path, comfy_root = argv[1], argv[2]
    sys.path.insert(0, comfy_root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    write_random_sd15_checkpoint(path)


# ------------------------------------------------------------------------------------- server and browser

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def _tail(path, n=60):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


class Server:
    def __init__(self, url, base, proc, log, builder, builder_log):
        self.url, self.base, self.proc, self.log = url, base, proc, log
        self.builder, self.builder_log = builder, builder_log


def _example_image(comfy_root, dest):
    src = os.path.join(comfy_root, "input", "example.png")
    if os.path.isfile(src):
        shutil.copy(src, dest)
        return
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (512, 512), "white")
    ImageDraw.Draw(image).ellipse((96, 96, 416, 416), outline="black", width=12)
    image.save(dest)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_root = find_comfyui()
    base = str(tmp_path_factory.mktemp("comfyui-e2e"))
    for sub in ("custom_nodes", "input", "output", "temp", "user/default", "models"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    # ComfyUI's loader finds the pack in <base>/custom_nodes (--base-directory moves custom_nodes too)
    os.symlink(ROOT, os.path.join(base, "custom_nodes", "comfyui-asag"))
    # a settled user: past the first-run template browser, no minimap over the graph in screenshots
    with open(os.path.join(base, "user", "default", "comfy.settings.json"), "w") as f:
        json.dump({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}, f)
    _example_image(comfy_root, os.path.join(base, "input", "example.png"))
    # every model file the workflows name, as an empty placeholder in its folder: the frontend's
    # missing-models check then passes exactly when names and folders agree with MODEL_FILES
    for name, folder in wc.MODEL_FILES.items():
        os.makedirs(os.path.join(base, "models", folder), exist_ok=True)
        if name != SD15_CKPT:
            open(os.path.join(base, "models", folder, name), "wb").close()

    builder_log = os.path.join(base, "checkpoint_writer.log")
    with open(builder_log, "w") as log:
        builder = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--write-sd15-checkpoint",
             os.path.join(base, "models", "checkpoints", SD15_CKPT), comfy_root],
            cwd=comfy_root, stdout=log, stderr=subprocess.STDOUT)

    port = _free_port()
    server_log = os.path.join(base, "comfyui.log")
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", base, "--output-directory", os.path.join(base, "output"),
           "--input-directory", os.path.join(base, "input"), "--temp-directory", os.path.join(base, "temp"),
           "--user-directory", os.path.join(base, "user"), "--database-url", "sqlite:///:memory:",
           "--disable-auto-launch", "--disable-api-nodes"]
    with open(server_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=comfy_root, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    srv = Server(url, base, proc, server_log, builder, builder_log)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{_tail(server_log)}", pytrace=False)
            try:
                info = _get_json(url + "/object_info/ASAG")
                if "ASAG" in info:
                    break
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not list ASAG in /object_info in time:\n{_tail(server_log)}", pytrace=False)
            time.sleep(0.5)
        yield srv
    finally:
        for p in (proc, builder):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        os.makedirs(ARTIFACTS, exist_ok=True)
        for log_path in (server_log, builder_log):
            shutil.copy(log_path, ARTIFACTS)


class Events:
    """Everything the page reports, with the moment the app became ready."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.items = []  # (kind, text)
        self.ready_at = None

    def mark(self):
        return len(self.items)

    def problems(self, since=0):
        """Console errors, page errors and failed local requests since ``since`` (network noise from
        the blocked outside world left out)."""
        out = []
        for i, (kind, text) in enumerate(self.items[since:], start=since):
            starting = self.ready_at is None or i < self.ready_at
            if kind == "pageerror":
                if not (starting and any(e in text for e in STARTUP_PAGE_ERRORS)):
                    out.append(f"page error: {text}")
            elif kind == "console.error":
                # failed loads are judged by their responses below; outside requests are blocked
                if not any(s in text for s in ("Failed to load resource", "net::ERR_", "Failed to fetch")):
                    out.append(f"console error: {text}")
            elif kind in ("response", "requestfailed"):
                reason, url = text.split(" ", 1)
                if reason == "net::ERR_ABORTED":
                    continue  # cancelled by the page itself (e.g. superseded settings writes), not a failure
                if url.startswith(self.base_url):
                    path = url[len(self.base_url):]
                    if not any(path.startswith(p) for p in EXPECTED_LOCAL_404):
                        out.append(f"{kind}: {text}")
        return out


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = str(tmp_path_factory.mktemp("chromium-profile"))
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT)
        try:
            # nothing leaves the machine: registry, release and model-size look-ups fail the same everywhere
            context.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
            pg = context.pages[0] if context.pages else context.new_page()
            events = Events(server.url)
            pg.on("console", lambda m: events.items.append((f"console.{m.type}", m.text)))
            pg.on("pageerror", lambda e: events.items.append(("pageerror", str(e))))
            pg.on("response", lambda r: r.status >= 400 and events.items.append(("response", f"{r.status} {r.url}")))
            pg.on("requestfailed", lambda r: events.items.append(("requestfailed", f"{r.failure} {r.url}")))
            pg.goto(server.url)
            pg.wait_for_function("() => window.app && window.app.vueAppReady && window.app.graph && window.LiteGraph",
                                 timeout=120_000)
            pg.wait_for_timeout(1500)  # let the start-up requests settle
            events.ready_at = len(events.items)
            pg.startup_dialogs = open_dialogs(pg)
            close_overlays(pg)
            pg.events = events
            yield pg
        finally:
            context.close()


# ------------------------------------------------------------------------------------- page helpers

COUNT_LOADS = """() => { if (app.__e2eCounting) return;
    const load = app.loadGraphData.bind(app);
    app.loadGraphData = async (...args) => {
        try { return await load(...args); } finally { window.__e2eLoads = (window.__e2eLoads || 0) + 1; }
    };
    app.__e2eCounting = true; }"""


def drop_workflow(pg, wf: dict, file_name: str):
    """Drop ``wf`` onto the canvas as a .json file (the user's drag and drop); return once the
    editor's loadGraphData has finished with it."""
    pg.evaluate(COUNT_LOADS)
    before = pg.evaluate("() => window.__e2eLoads || 0")
    transfer = pg.evaluate_handle(
        """([text, name]) => { const dt = new DataTransfer();
                              dt.items.add(new File([text], name, {type: "application/json"})); return dt; }""",
        [json.dumps(wf), file_name])
    pg.dispatch_event("#graph-canvas", "drop", {"dataTransfer": transfer})
    pg.wait_for_function("(n) => (window.__e2eLoads || 0) > n", arg=before, timeout=30_000)
    ids = sorted(n["id"] for n in wf["nodes"])
    assert sorted(pg.evaluate("() => app.graph.nodes.map(n => n.id)")) == ids, f"{file_name} is not the graph"
    pg.wait_for_timeout(500)  # dialogs and toasts render on the next frames


def open_dialogs(pg):
    return pg.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")


def open_toasts(pg):
    return pg.evaluate("() => [...document.querySelectorAll('.p-toast-message')].map(t => t.innerText)")


def close_overlays(pg):
    for _ in range(5):
        if not open_dialogs(pg):
            break
        pg.keyboard.press("Escape")
        pg.wait_for_timeout(300)
        if open_dialogs(pg):
            pg.evaluate("() => document.querySelectorAll('.p-dialog .p-dialog-close-button').forEach(b => b.click())")
            pg.wait_for_timeout(300)
    pg.evaluate("() => document.querySelectorAll('.p-toast-message .p-toast-close-button').forEach(b => b.click())")
    assert not open_dialogs(pg), "a dialog would not close"


def missing_node_types(dialog_text: str, candidates) -> set:
    """The node types a missing-nodes dialog lists, out of ``candidates``."""
    lines = {line.strip() for line in dialog_text.splitlines()}
    return {c for c in candidates if c in lines}


def is_missing_nodes_dialog(text: str) -> bool:
    return "missing" in text.lower() and "node" in text.lower() and "Missing Models" not in text


def serialized(pg) -> dict:
    return wc.strip_nulls(pg.evaluate("() => app.graph.serialize()"))


def screenshot(pg, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, f"{name}.png")
    pg.screenshot(path=path)
    return path


# ------------------------------------------------------------------------------------- tests

def test_frontend_starts_with_our_nodes(server, page):
    info = _get_json(server.url + "/object_info")
    for node_id in wc.OURS:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["python_module"] == "custom_nodes.comfyui-asag", "loaded through the symlinked pack"
    registered = page.evaluate("(ids) => ids.filter(t => t in LiteGraph.registered_node_types)", list(wc.OURS))
    assert registered == list(wc.OURS), "the frontend did not register all of this pack's nodes"
    assert not page.events.problems(0), "errors while the editor started:\n" + "\n".join(page.events.problems(0))
    assert not page.startup_dialogs, f"dialogs at start: {page.startup_dialogs}"


def test_comfyui_serves_the_workflows_as_templates(server):
    """ComfyUI offers a pack's workflows/ folder in its template browser (under the pack's name)."""
    templates = _get_json(server.url + "/api/workflow_templates")
    assert sorted(templates.get("comfyui-asag", [])) == sorted(n[:-5] for n in wc.WORKFLOW_FILES), templates
    for name in wc.WORKFLOW_FILES:
        assert _get_json(f"{server.url}/api/workflow_templates/comfyui-asag/{name}") == wc.load(name), name


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

    if name == wc.THIRD_PARTY_FILE:
        assert len(dialogs) == 1 and is_missing_nodes_dialog(dialogs[0]), dialogs
        listed = missing_node_types(dialogs[0], [*wc.THIRD_PARTY_NODES, *wc.OURS, *wc.EXPECTED_CORE])
        assert listed == set(wc.THIRD_PARTY_NODES), f"the dialog lists {sorted(listed)}:\n{dialogs[0]}"
    else:
        assert not dialogs, f"{name} opened dialogs (missing nodes or models?):\n" + "\n---\n".join(dialogs)
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
    assert rc == 0, f"writing the random SD1.5 checkpoint failed:\n{_tail(server.builder_log)}"

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
        history = _get_json(f"{server.url}/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
            break
        if server.proc.poll() is not None:
            pytest.fail(f"ComfyUI died while running:\n{_tail(server.log)}", pytrace=False)
        time.sleep(1)
    assert entry is not None, f"the prompt did not finish in time:\n{_tail(server.log)}"
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{_tail(server.log)}"
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


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--write-sd15-checkpoint":
    _child_main(sys.argv[1:])
