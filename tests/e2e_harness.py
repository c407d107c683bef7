"""The real ComfyUI and its graph editor for the browser tests and the thumbnail maker.

:func:`comfyui_server` starts ComfyUI (``main.py --cpu``) on a free loopback port with a throw-away
base directory whose custom_nodes/comfyui-asag is a symlink to this repository, so ComfyUI's own
loader loads the pack; every model file a workflow names exists there as an empty placeholder in its
folder. :func:`editor` opens the frontend it serves in headless Debian Chromium (Playwright with
``executable_path``, no browser download), with every request that would leave the machine aborted
and everything the page reports recorded (:class:`Events`). The page helpers below drive the editor
as a user does (dropping a workflow file onto the canvas) and read back what it shows.

``python tests/e2e_harness.py --write-sd15-checkpoint PATH COMFYUI_ROOT`` writes a random-weight
SD1.5-format checkpoint in a child process (it imports ComfyUI).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import workflow_checks as wc  # noqa: E402
from tests import workflow_templates as wt  # noqa: E402
from tests.comfy_host import HOW_TO, comfyui_version, find_comfyui  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = os.path.join(ROOT, "test-artifacts", "e2e")
VIEWPORT = {"width": 1600, "height": 1000}
SD15_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"

# Frontend 1.27.10 on a fresh profile throws this once while starting, with no custom nodes at
# all too (reproduced with --disable-all-custom-nodes): not ours, tolerated only before the app is ready.
STARTUP_PAGE_ERRORS = ("Cannot read properties of undefined (reading 'id')",)
# Frontend 1.43.18 logs this once while starting, on its own: tolerated only before ready.
STARTUP_CONSOLE_ERRORS = ("ComfyApp graph accessed before initialization",)
# What a frontend logs when the page's Content Security Policy stops it reaching the outside world
# (1.43.18 and 1.58.1 look an unknown node type up in the registry): outside requests are blocked anyway.
BLOCKED_OUTSIDE = "violates the following Content Security Policy directive"

# The newest frontend on the registry, served with --front-end-root on hosts >= NEWEST_FRONTEND_FROM
NEWEST_FRONTEND = "1.58.1"
NEWEST_FRONTEND_FROM = (0, 22, 0)
HOW_TO_NEWEST = (f"set ASAG_NEWEST_FRONTEND_DIR to a folder holding comfyui-frontend-package=={NEWEST_FRONTEND}: "
                 f"pip install --no-deps --target DIR comfyui-frontend-package=={NEWEST_FRONTEND} (.ci/run does this)")


def pinned_frontend(comfy_root) -> str:
    """The frontend version the host's requirements.txt pins."""
    with open(os.path.join(comfy_root, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("comfyui-frontend-package=="):
                return line.split("==", 1)[1].strip()
    raise ValueError(f"{comfy_root}/requirements.txt pins no comfyui-frontend-package")


def frontends(comfy_root) -> list[str]:
    """The frontends the browser tests run on with this host: its pinned one, and the newest where the
    host is new enough to serve it."""
    if comfy_root is None:
        return ["pinned"]
    return ["pinned", "newest"] if comfyui_version(comfy_root) >= NEWEST_FRONTEND_FROM else ["pinned"]


def frontend_root(kind) -> str | None:
    """--front-end-root for ``kind`` ('pinned': None, the host's own); raises with how to install."""
    if kind == "pinned":
        return None
    base = os.environ.get("ASAG_NEWEST_FRONTEND_DIR", "")
    static = os.path.join(base, "comfyui_frontend_package", "static")
    if not base or not os.path.isfile(os.path.join(static, "index.html")):
        raise FileNotFoundError(f"no frontend at ASAG_NEWEST_FRONTEND_DIR={base!r}: {HOW_TO_NEWEST}")
    return static
# Local 404s of a fresh user directory (no user.css, no saved workflows or templates yet)
EXPECTED_LOCAL_404 = ("/user.css", "/api/userdata/user.css", "/api/userdata?dir=workflows",
                      "/api/userdata?dir=subgraphs", "/api/userdata/comfy.templates.json",
                      # the help panel asks for docs/<node>/<locale>.md first, then docs/<node>.md
                      *(f"/extensions/comfyui-asag/docs/{node}/en.md" for node in wc.OURS))


def skip_reason():
    """Why the browser tests cannot run here, or None."""
    if find_comfyui() is None:
        return HOW_TO
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (apt-get install -y chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    return None


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def tail(path, n=60):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------- the random SD1.5 checkpoint

def write_random_sd15_checkpoint(path: str) -> None:
    """A loadable SD1.5-format checkpoint with random weights (fp16), built with ComfyUI's classes.

    SD1.5 detection needs model_channels 320 and context_dim 768, so the U-Net keeps those and is cut
    to one level (one res block, one transformer each) plus the middle block ASAG perturbs; the CLIP-L
    text encoder and the VAE have fixed layouts in ComfyUI's loader and are full size. comfy.ops leave
    weights uninitialised, so every parameter is set here.
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


def start_checkpoint_writer(path, comfy_root, log_path) -> subprocess.Popen:
    """Write the random SD1.5 checkpoint to ``path`` in a child process (it runs beside ComfyUI's start)."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--write-sd15-checkpoint", path, comfy_root],
            cwd=comfy_root, stdout=log, stderr=subprocess.STDOUT)


def _child_main(argv):
    path, comfy_root = argv[1], argv[2]
    sys.path.insert(0, comfy_root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    write_random_sd15_checkpoint(path)


# ------------------------------------------------------------------------------------- the server

class Server:
    def __init__(self, url, base, proc, log):
        self.url, self.base, self.proc, self.log = url, base, proc, log


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _example_image(comfy_root, dest):
    src = os.path.join(comfy_root, "input", "example.png")
    if os.path.isfile(src):
        shutil.copy(src, dest)
        return
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (512, 512), "white")
    ImageDraw.Draw(image).ellipse((96, 96, 416, 416), outline="black", width=12)
    image.save(dest)


def prepare_base(base, comfy_root, skip_placeholders=()):
    """The throw-away ComfyUI base directory: the pack symlinked into custom_nodes, a settled user
    (past the first-run template browser, no minimap over the graph), ComfyUI's example.png in input/
    and every model file the workflows name as an empty placeholder in its folder (the frontend's
    missing-models check then passes exactly when names and folders agree with MODEL_FILES)."""
    for sub in ("custom_nodes", "input", "output", "temp", "user/default", "models"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    os.symlink(ROOT, os.path.join(base, "custom_nodes", "comfyui-asag"))
    with open(os.path.join(base, "user", "default", "comfy.settings.json"), "w") as f:
        json.dump({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}, f)
    _example_image(comfy_root, os.path.join(base, "input", "example.png"))
    for name, folder in model_placeholders():
        os.makedirs(os.path.join(base, "models", folder), exist_ok=True)
        if name not in skip_placeholders:
            open(os.path.join(base, "models", folder, name), "wb").close()
    for image in input_images():
        if not os.path.exists(os.path.join(base, "input", image)):
            shutil.copy(os.path.join(base, "input", "example.png"), os.path.join(base, "input", image))


def model_placeholders() -> list[tuple[str, str]]:
    """(file, models/ folder) of every model file a workflow names: the SD1.5 workflows' table and the
    template workflows' loaders (their ``properties.models``, as the official templates declare them)."""
    out = dict(wc.MODEL_FILES)
    for name in wc.WORKFLOW_FILES:
        for file_name, folder, _ in wt.loader_files(wc.load(name)):
            out.setdefault(file_name, folder)
    return sorted(out.items())


def input_images() -> set:
    """Every image a LoadImage node of a workflow names (the test server's input/ gets a copy of
    example.png under each name, as a user's own picture)."""
    return {n["widgets_values"][0] for name in wc.WORKFLOW_FILES for n in wt.all_nodes(wc.load(name))
            if n["type"] == "LoadImage"}


@contextlib.contextmanager
def comfyui_server(base, comfy_root, fail, frontend_root=None):
    """ComfyUI serving ``base`` (see :func:`prepare_base`) on loopback until the block ends, with its
    pinned frontend or the one at ``frontend_root`` (``--front-end-root``); ``fail`` reports a start that
    goes wrong (pytest.fail in the tests). Its log is copied to ARTIFACTS."""
    port = _free_port()
    server_log = os.path.join(base, "comfyui.log")
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", base, "--output-directory", os.path.join(base, "output"),
           "--input-directory", os.path.join(base, "input"), "--temp-directory", os.path.join(base, "temp"),
           "--user-directory", os.path.join(base, "user"), "--database-url", "sqlite:///:memory:",
           "--disable-auto-launch", "--disable-api-nodes"]
    if frontend_root:
        cmd += ["--front-end-root", frontend_root]
    with open(server_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=comfy_root, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                fail(f"ComfyUI exited with {proc.returncode}:\n{tail(server_log)}")
            try:
                if "ASAG" in get_json(url + "/object_info/ASAG"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                fail(f"ComfyUI did not list ASAG in /object_info in time:\n{tail(server_log)}")
            time.sleep(0.5)
        yield Server(url, base, proc, server_log)
    finally:
        stop(proc)
        os.makedirs(ARTIFACTS, exist_ok=True)
        shutil.copy(server_log, ARTIFACTS)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------- the browser

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
                if starting and any(e in text for e in STARTUP_CONSOLE_ERRORS):
                    continue
                # failed loads are judged by their responses below; outside requests are blocked
                if not any(s in text for s in ("Failed to load resource", "net::ERR_", "Failed to fetch",
                                               BLOCKED_OUTSIDE)):
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


@contextlib.contextmanager
def editor(server, profile):
    """The graph editor in headless Chromium, ready, with ``page.events`` and ``page.startup_dialogs``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = browser_context(pw, server, profile)
        try:
            pg = open_page(context, server, context.pages[0] if context.pages else None)
            pg.playwright = pw
            yield pg
        finally:
            context.close()


def browser_context(pw, server, profile):
    """Headless Chromium with its own ``profile`` folder, every request that would leave the machine
    aborted (registry, release and model-size look-ups fail the same everywhere)."""
    context = pw.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT)
    context.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
    return context


def open_page(context, server, pg=None):
    """The editor in a page of ``context`` (a new tab unless ``pg`` is given), ready, recording what it
    reports, with ``page.startup_dialogs`` and ``page.frontend`` (its version, a tuple)."""
    pg = pg or context.new_page()
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
    pg.frontend = frontend_version(pg)
    return pg


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
    ids = sorted(str(n["id"]) for n in wf["nodes"])  # 1.58.1 keeps node ids as strings
    assert sorted(pg.evaluate("() => app.graph.nodes.map(n => String(n.id))")) == ids, f"{file_name} is not the graph"
    pg.wait_for_timeout(500)  # dialogs and toasts render on the next frames


def frontend_version(pg) -> tuple:
    return tuple(int(p) for p in pg.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__").split("."))


def open_dialogs(pg):
    """Modal dialogs: PrimeVue's .p-dialog (1.27, 1.43), role=dialog (1.58's own dialogs)."""
    return pg.evaluate("() => [...document.querySelectorAll('.p-dialog, [role=dialog]')].map(d => d.innerText)")


# Where each frontend reports missing node types: 1.27 a dialog, 1.43 an error overlay
# (role=alert, "Some nodes are missing"), 1.58 a notification (role=status, "Missing node: <type>")
MISSING_NOTICE_ROLE = {(1, 27): "dialog", (1, 43): "alert", (1, 58): "status"}


def missing_node_notices(pg) -> list[tuple[str, str]]:
    """(kind, text) of every dialog, alert or status notice that reports missing nodes."""
    found = pg.evaluate("""() => {
        const out = [];
        for (const [kind, sel] of [['dialog', '.p-dialog, [role=dialog]'], ['alert', '[role=alert]'],
                                   ['status', '[role=status]']]) {
            for (const el of document.querySelectorAll(sel)) out.push([kind, el.innerText || '']);
        }
        return out;
    }""")
    return [(kind, text) for kind, text in found if is_missing_nodes_dialog(text)]


def close_right_panel(pg):
    """Close the right side panel (1.43 and 1.58 open it with a node's info and keep it open; it covers
    the right of the canvas). Frontends without it have no such setting."""
    pg.evaluate("""async () => {
        const setting = app.extensionManager.setting;
        if (setting.get('Comfy.RightSidePanel.IsOpen')) await setting.set('Comfy.RightSidePanel.IsOpen', false);
    }""")


def dismiss_notices(pg):
    """Close the error overlay and notifications that report missing nodes (1.43, 1.58)."""
    pg.evaluate("""() => {
        for (const el of document.querySelectorAll('[role=alert], [role=status]')) {
            for (const b of el.querySelectorAll('button')) {
                const label = (b.innerText + ' ' + (b.getAttribute('aria-label') || '')).toLowerCase();
                if (label.includes('dismiss') || label.includes('close')) b.click();
            }
        }
    }""")
    pg.wait_for_timeout(300)


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
    dismiss_notices(pg)
    close_right_panel(pg)
    assert not open_dialogs(pg), "a dialog would not close"


def missing_node_types(dialog_text: str, candidates) -> set:
    """The node types a missing-nodes notice names, out of ``candidates`` (a line of their own, or after
    "Missing node: ")."""
    lines = {line.strip() for line in dialog_text.splitlines()}
    lines |= {line.split(":", 1)[1].strip() for line in lines if ":" in line}
    return {c for c in candidates if c in lines}


def is_missing_nodes_dialog(text: str) -> bool:
    return "missing" in text.lower() and "node" in text.lower() and "Missing Models" not in text


def flagged_nodes(pg) -> list:
    """[id, type] of every node on the canvas the editor flags: a type it has no definition for (drawn
    red as missing) or a node marked with errors."""
    return pg.evaluate("""() => app.graph.nodes
        .filter(n => !(n.type in LiteGraph.registered_node_types) || n.has_errors || n.last_serialization?.type)
        .map(n => [n.id, n.type])""")


def serialized(pg) -> dict:
    return wc.strip_nulls(pg.evaluate("() => app.graph.serialize()"))


def screenshot(pg, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, f"{name}.png")
    pg.screenshot(path=path)
    return path


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--write-sd15-checkpoint":
    _child_main(sys.argv[1:])
