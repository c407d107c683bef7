"""What the shipped workflows (workflows/*.json) must satisfy, shared by the static and the browser tests.

The workflows are in the ComfyUI frontend's own save format (graph version 0.4, as frontend 1.27 writes
it, with null slot fields left out). Node definitions come from the real ComfyUI when one is found
(``INPUT_TYPES`` of each class, which ComfyUI also provides for V3 ``io.Schema`` nodes); without one,
this pack's nodes are checked against ``OUR_NODES`` below and core nodes only by name.
"""

from __future__ import annotations

import asyncio
import json
import math
import os

from tests.workflow_graph import (  # noqa: F401  (the tests read them as wc.<name>)
    CONTROL_AFTER,
    DECODERS,
    SAMPLERS,
    SAVERS,
    SUBGRAPH_INPUT,
    SUBGRAPH_OUTPUT,
    TEMPLATE_KEYS,
    _links,
    _nodes,
    adds_noise,
    consumers,
    flatten,
    graph_summary,
    nodes_of,
    reaches_save,
    seed_of,
    source,
    strip_nulls,
    summary_diff,
    upstream,
    widget,
)
from tests.workflow_models import (  # noqa: F401
    LOADER_FOLDERS,
    MODEL_FILE_RE,
    MODEL_FILES,
    MODEL_SOURCES,
    check_models,
)
from tests.workflow_notes import TEMPLATE_WORKFLOWS
from tests.workflow_templates import all_nodes, scopes, subgraph_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")

# The workflows made from ComfyUI's official templates (tests/workflow_notes.py names each one's template)
TEMPLATE_WORKFLOW_FILES = tuple(TEMPLATE_WORKFLOWS)
# SD1.5 workflows kept for what no template serves: the CPU-sized demo (the browser test runs it on a
# random checkpoint), the ablation grid, ControlNet (no SD1.5 ControlNet template any more) and a
# third-party pack (IP-Adapter); none follows a template
OWN_WORKFLOW_FILES = ("sd15_asag.json", "ablation_asag.json", "controlnet_asag.json", "ipadapter_asag.json")
WORKFLOW_FILES = TEMPLATE_WORKFLOW_FILES + OWN_WORKFLOW_FILES

# Nodes that live only in the frontend (no Python class): type -> widget names
FRONTEND_ONLY = {"Note": ("text",), "MarkdownNote": ("text",)}
NOTE_TYPES = ("Note", "MarkdownNote")
FRONTEND_TYPES = (*FRONTEND_ONLY, "Reroute", "PrimitiveNode")  # drawn by the frontend, never sent to ComfyUI

OURS = ("ASAG", "ASAGAdvanced", "ASAGGuider")

# Core node types the workflows use: the fallback when no ComfyUI is found (with one, the host's
# NODE_CLASS_MAPPINGS decides).
EXPECTED_CORE = frozenset({
    "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
    "PreviewImage", "PrimitiveInt", "SamplerCustomAdvanced", "RandomNoise", "KSamplerSelect", "BasicScheduler",
    "KarrasScheduler", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader", "FluxGuidance",
    "EmptySD3LatentImage", "ModelSamplingSD3", "ConditioningZeroOut", "LoadImage", "Canny", "ControlNetLoader",
    "ControlNetApplyAdvanced",
    # the video workflows
    "CLIPLoader", "LoraLoaderModelOnly", "KSamplerAdvanced", "EmptyHunyuanLatentVideo", "CreateVideo", "SaveVideo",
    "Wan22ImageToVideoLatent", "LTXVConditioning", "LTXVScheduler", "EmptyLTXVLatentVideo", "SamplerCustom",
    "BasicGuider", "VAEDecodeTiled",
})

# cubiq/ComfyUI_IPAdapter_plus, allowed only in ipadapter_asag.json (IPAdapterPlus.py at 9d076a3:
# IPAdapterUnifiedLoader, and "IPAdapter" = class IPAdapterSimple).
THIRD_PARTY_PACK = "ComfyUI_IPAdapter_plus"
THIRD_PARTY_REPO = "cubiq/ComfyUI_IPAdapter_plus"
THIRD_PARTY_FILE = "ipadapter_asag.json"
THIRD_PARTY_NODES = {
    "IPAdapterUnifiedLoader": {
        "required": {
            "model": ("MODEL",),
            "preset": ([
                "LIGHT - SD1.5 only (low strength)", "STANDARD (medium strength)", "VIT-G (medium strength)",
                "PLUS (high strength)", "PLUS FACE (portraits)", "FULL FACE - SD1.5 only (portraits stronger)",
            ],),
        },
        "optional": {"ipadapter": ("IPADAPTER",)},
        "outputs": ("MODEL", "IPADAPTER"),
    },
    "IPAdapter": {
        "required": {
            "model": ("MODEL",),
            "ipadapter": ("IPADAPTER",),
            "image": ("IMAGE",),
            "weight": ("FLOAT", {"default": 1.0, "min": -1, "max": 3, "step": 0.05}),
            "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "weight_type": (["standard", "prompt is more important", "style transfer"],),
        },
        "optional": {"attn_mask": ("MASK",)},
        "outputs": ("MODEL",),
    },
}

# This pack's nodes as the tests expect them (kept in step with nodes/guidance_nodes.py: with a
# ComfyUI present, test_workflows checks that this equals the loaded schema).
OUR_NODES = {
    "ASAG": {
        "required": {
            "model": ("MODEL", {}),
            "scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 100.0}),
        },
        "outputs": ("MODEL",),
    },
    "ASAGAdvanced": {
        "required": {
            "model": ("MODEL", {}),
            "scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 100.0}),
            "iterations": ("INT", {"default": 2, "min": 0, "max": 100}),
            "lam": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0}),
            "cost": ("COMBO", {"default": "adversarial", "options": ["adversarial", "similarity", "uniform"]}),
            "layers": ("STRING", {"default": "auto"}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
            "rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
            "rescale_mode": ("COMBO", {"default": "full", "options": ["full", "partial"]}),
        },
        "outputs": ("MODEL",),
    },
    "ASAGGuider": {
        "required": {
            "model": ("MODEL", {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 100.0}),
        },
        "outputs": ("GUIDER",),
    },
}

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


def load(name: str) -> dict:
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def shipped_files() -> list[str]:
    return sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))


# ----------------------------------------------------------------------------------------------- thumbnails

# ComfyUI's template browser shows <name>.jpg beside <name>.json (tests/thumbnails.py makes them)
THUMBNAIL_MAX_BYTES = 150_000
THUMBNAIL_MIN_BYTES = 10_000  # a graph picture at THUMBNAIL_MIN_WIDTH is far above this; a blank one is not
THUMBNAIL_MIN_WIDTH = 640


def thumbnail_name(workflow_file: str) -> str:
    return workflow_file[:-len(".json")] + ".jpg"


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a baseline or progressive JPEG's frame header; ValueError if ``data`` is not
    a whole JPEG (start and end markers, a frame header before the scan)."""
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        raise ValueError("no JPEG start/end marker")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0 baseline, SOF1 extended, SOF2 progressive
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ValueError("no frame header before the image data")


def check_thumbnail(workflow_file: str) -> list[str]:
    path = os.path.join(WORKFLOWS_DIR, thumbnail_name(workflow_file))
    if not os.path.isfile(path):
        return [f"{workflow_file}: no thumbnail {thumbnail_name(workflow_file)} (python -m tests.thumbnails)"]
    with open(path, "rb") as f:
        data = f.read()
    try:
        width, height = jpeg_size(data)
    except ValueError as e:
        return [f"{thumbnail_name(workflow_file)} is not a JPEG: {e}"]
    errors = []
    if not THUMBNAIL_MIN_BYTES <= len(data) <= THUMBNAIL_MAX_BYTES:
        errors.append(f"{thumbnail_name(workflow_file)}: {len(data)} bytes, not within "
                      f"{THUMBNAIL_MIN_BYTES}-{THUMBNAIL_MAX_BYTES}")
    if width < THUMBNAIL_MIN_WIDTH or not 0.4 <= height / width <= 1.0:
        errors.append(f"{thumbnail_name(workflow_file)}: {width}x{height} (at least {THUMBNAIL_MIN_WIDTH} wide, "
                      "landscape like the editor)")
    return errors


# ----------------------------------------------------------------------------------------------- schemas

class Spec:
    """One node definition, reduced to what a saved workflow reflects."""

    def __init__(self, required: dict, optional: dict | None, outputs):
        self.inputs = []  # (name, type, options, required)
        for section, is_required in ((required or {}, True), (optional or {}, False)):
            for name, entry in section.items():
                kind = entry[0]
                options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
                if isinstance(kind, (list, tuple)):
                    options["options"] = list(kind)
                    kind = "COMBO"
                kind = str(getattr(kind, "value", kind))  # V3 IO enum members
                self.inputs.append((name, kind, options, is_required))
        self.outputs = tuple(str(getattr(t, "value", t)) for t in outputs)

    @classmethod
    def from_class(cls, node_class) -> "Spec":
        types = node_class.INPUT_TYPES()
        return cls(types.get("required"), types.get("optional"), node_class.RETURN_TYPES)

    @classmethod
    def from_table(cls, entry: dict) -> "Spec":
        return cls(entry.get("required"), entry.get("optional"), entry["outputs"])

    @staticmethod
    def is_widget(kind, options) -> bool:
        return kind in WIDGET_TYPES and not options.get("forceInput", False)

    def sockets(self):
        return [(n, k, o, r) for n, k, o, r in self.inputs if not self.is_widget(k, o)]

    def widgets(self):
        """The frontend's widgets, in widgets_values order: (name, kind, options)."""
        out = []
        for name, kind, options, _ in self.inputs:
            if not self.is_widget(kind, options):
                continue
            out.append((name, kind, options))
            if options.get("control_after_generate"):
                out.append(("control_after_generate", "CONTROL", {}))
            if options.get("image_upload"):
                out.append(("upload", "UPLOAD", {}))
        return out


def load_core_nodes(host) -> None:
    """ComfyUI's extra nodes (comfy_extras), loaded into the started host. ComfyUI's nodes.py puts
    comfy/ first on sys.path, so in a process that did not start through main.py ``utils`` is
    comfy/utils.py and the extras that import the server (utils.install_util: ImageStitch and the
    rest of nodes_images.py) fail to load; main.py imports the ``utils`` package first, as this does."""
    import importlib
    import sys

    loaded = sys.modules.get("utils")
    if loaded is not None and not hasattr(loaded, "__path__"):
        del sys.modules["utils"]
    comfy_dir = os.path.join(host.root, "comfy")
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != comfy_dir]
    try:
        importlib.import_module("utils.install_util")
    finally:
        sys.path[:] = saved
    asyncio.run(host.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))


def node_types(wf) -> set:
    """The node types ``wf`` asks ComfyUI for: every node's, inside subgraphs too, without the subgraph
    nodes themselves and the nodes only the frontend draws."""
    return {n["type"] for n in all_nodes(wf)} - subgraph_ids(wf) - set(FRONTEND_TYPES)


def host_specs(host) -> dict:
    """type -> Spec for every node class the started ComfyUI knows."""
    specs = {}
    for node_type, node_class in host.nodes.NODE_CLASS_MAPPINGS.items():
        try:
            specs[node_type] = Spec.from_class(node_class)
        except Exception:  # a broken third-party class must not hide the others; ours are checked by name
            continue
    return specs


def table_specs() -> dict:
    specs = {t: Spec.from_table(e) for t, e in OUR_NODES.items()}
    specs.update({t: Spec.from_table(e) for t, e in THIRD_PARTY_NODES.items()})
    return specs


def comparable(spec: Spec) -> dict:
    """A spec reduced to names, kinds, defaults, ranges and options (for comparing ours with the host's)."""
    keep = ("default", "min", "max", "options")
    return {
        "inputs": [(n, k, {key: o[key] for key in keep if key in o}, r) for n, k, o, r in spec.inputs],
        "outputs": list(spec.outputs),
    }


# ----------------------------------------------------------------------------------------------- checks

def check_structure(wf) -> list[str]:
    errors = []
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        if key not in wf:
            errors.append(f"top level: no {key!r}")
    if errors:
        return errors
    if wf["version"] != 0.4:
        errors.append(f"version {wf['version']} (the frontend saves 0.4)")
    ids = [n["id"] for n in wf["nodes"]]
    if len(ids) != len(set(ids)):
        errors.append(f"duplicate node ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    if ids and max(ids) > wf["last_node_id"]:
        errors.append(f"node id {max(ids)} > last_node_id {wf['last_node_id']}")
    link_ids = [link[0] for link in wf["links"]]
    if len(link_ids) != len(set(link_ids)):
        errors.append("duplicate link ids")
    if link_ids and max(link_ids) > wf["last_link_id"]:
        errors.append(f"link id {max(link_ids)} > last_link_id {wf['last_link_id']}")
    subgraphs = subgraph_ids(wf)
    orders = sorted(n.get("order", -1) for n in wf["nodes"])
    if orders != list(range(len(wf["nodes"]))):
        errors.append(f"node 'order' values are not 0..{len(wf['nodes']) - 1}")
    for node in wf["nodes"]:
        where = f"node {node.get('id')} ({node.get('type')})"
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties"):
            if key not in node:
                errors.append(f"{where}: no {key!r}")
        if node.get("mode", 0) != 0:
            errors.append(f"{where}: mode {node['mode']} (muted or bypassed)")
        if node.get("type") not in (*NOTE_TYPES, "SaveImage", "PreviewImage", *subgraphs):
            if node.get("properties", {}).get("Node name for S&R") != node.get("type"):
                errors.append(f"{where}: properties['Node name for S&R'] is not the node type")
    return errors


def check_links(wf) -> list[str]:
    errors = []
    nodes = _nodes(wf)
    links = _links(wf)
    for link in wf["links"]:
        if len(link) != 6:
            errors.append(f"link {link}: not [id, from, from_slot, to, to_slot, type]")
            continue
        lid, src, src_slot, dst, dst_slot, ltype = link
        if src not in nodes or dst not in nodes:
            errors.append(f"link {lid}: an end is missing (nodes {src} -> {dst})")
            continue
        outs, ins = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if not 0 <= src_slot < len(outs):
            errors.append(f"link {lid}: output slot {src_slot} out of range for node {src}")
            continue
        if not 0 <= dst_slot < len(ins):
            errors.append(f"link {lid}: input slot {dst_slot} out of range for node {dst}")
            continue
        out, inp = outs[src_slot], ins[dst_slot]
        if ltype != out["type"]:
            errors.append(f"link {lid}: type {ltype} but output {src}.{out['name']} is {out['type']}")
        if "*" not in (out["type"], inp["type"]) and out["type"] != inp["type"]:
            errors.append(f"link {lid}: {out['type']} output into {inp['type']} input {dst}.{inp['name']}")
        if inp.get("link") != lid:
            errors.append(f"link {lid}: node {dst} input {inp['name']!r} says link {inp.get('link')}")
        if lid not in (out.get("links") or []):
            errors.append(f"link {lid}: node {src} output {out['name']!r} does not list it")
    for node in wf["nodes"]:
        for slot, inp in enumerate(node.get("inputs", [])):
            lid = inp.get("link")
            if lid is not None and (lid not in links or links[lid][3] != node["id"] or links[lid][4] != slot):
                errors.append(f"node {node['id']} input {inp['name']!r}: link {lid} is not a link into it")
        for slot, out in enumerate(node.get("outputs", [])):
            for lid in out.get("links") or []:
                if lid not in links or links[lid][1] != node["id"] or links[lid][2] != slot:
                    errors.append(f"node {node['id']} output {out['name']!r}: link {lid} is not a link from it")
    return errors


def check_scope_links(wf) -> list[str]:
    """In the root graph and every subgraph: each link's ends exist (a subgraph's input and output
    nodes included) and list it, and each linked input names a link into it."""
    errors = []
    for scope in scopes(wf):
        links = scope.links()
        nodes = {n["id"]: n for n in scope.nodes}
        for lid, link in links.items():
            where = f"{scope.name}: link {lid}"
            if link["origin_id"] == SUBGRAPH_INPUT:
                if lid not in scope.holder["inputs"][link["origin_slot"]].get("linkIds", []):
                    errors.append(f"{where}: the subgraph input does not list it")
            elif link["origin_id"] not in nodes:
                errors.append(f"{where}: no origin node {link['origin_id']}")
            elif lid not in (nodes[link["origin_id"]]["outputs"][link["origin_slot"]].get("links") or []):
                errors.append(f"{where}: output {link['origin_slot']} of node {link['origin_id']} does not list it")
            if link["target_id"] == SUBGRAPH_OUTPUT:
                if lid not in scope.holder["outputs"][link["target_slot"]].get("linkIds", []):
                    errors.append(f"{where}: the subgraph output does not list it")
            elif link["target_id"] not in nodes:
                errors.append(f"{where}: no target node {link['target_id']}")
            elif nodes[link["target_id"]]["inputs"][link["target_slot"]].get("link") != lid:
                errors.append(f"{where}: input {link['target_slot']} of node {link['target_id']} names another")
        for node in scope.nodes:
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and inp["link"] not in links:
                    errors.append(f"{scope.name}: node {node['id']} input {inp['name']!r}: no link {inp['link']}")
    return errors


def _number_ok(value, kind, options):
    if kind == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{value!r} is not an int"
    if kind == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return f"{value!r} is not a number"
    if "min" in options and value < options["min"]:
        return f"{value!r} < min {options['min']}"
    if "max" in options and value > options["max"]:
        return f"{value!r} > max {options['max']}"
    return None


def check_node_against_spec(node, spec: Spec) -> list[str]:
    """Sockets, outputs and widget values of one saved node against its definition."""
    where = f"node {node['id']} ({node['type']})"
    errors = []
    inputs = node.get("inputs", [])
    saved_sockets = [i["name"] for i in inputs if "widget" not in i]
    saved_widget_inputs = [i["name"] for i in inputs if "widget" in i]
    want_sockets = [n for n, _, _, _ in spec.sockets()]
    widgets = spec.widgets()
    want_widget_inputs = [n for n, k, _ in widgets if k != "CONTROL"]
    if saved_sockets != want_sockets:
        errors.append(f"{where}: socket inputs {saved_sockets}, definition has {want_sockets}")
    if saved_widget_inputs != want_widget_inputs:
        errors.append(f"{where}: widget inputs {saved_widget_inputs}, definition has {want_widget_inputs}")
    kinds = {n: k for n, k, _, _ in spec.inputs}
    for inp in inputs:
        declared = kinds.get(inp["name"])
        if declared is not None and declared != inp["type"] and inp["type"] not in ("COMBO", "IMAGEUPLOAD"):
            errors.append(f"{where}: input {inp['name']!r} saved as {inp['type']}, definition says {declared}")
    for name, _, _, required in spec.sockets():
        saved = next((i for i in inputs if i["name"] == name), None)
        if required and (saved is None or saved.get("link") is None):
            errors.append(f"{where}: required input {name!r} is not connected")
    saved_outputs = tuple(o["type"] for o in node.get("outputs", []))
    if saved_outputs != spec.outputs:
        errors.append(f"{where}: outputs {saved_outputs}, definition returns {spec.outputs}")
    return errors + check_widget_values(node, spec)


def check_widget_values(node, spec: Spec) -> list[str]:
    """The saved widget values of one node against its definition: count, type, range, choices."""
    where = f"node {node['id']} ({node['type']})"
    widgets = spec.widgets()
    errors = []
    values = node.get("widgets_values", [])
    if not isinstance(values, list) or len(values) != len(widgets):
        return [f"{where}: {len(values)} widget values for widgets {[w[0] for w in widgets]}"]
    for (name, kind, options), value in zip(widgets, values, strict=True):
        problem = None
        if kind == "CONTROL":
            problem = None if value in CONTROL_VALUES else f"{value!r} is not one of {CONTROL_VALUES}"
        elif kind == "UPLOAD":
            problem = None if value == "image" else f"{value!r} (the upload button saves 'image')"
        elif kind in ("INT", "FLOAT"):
            problem = _number_ok(value, kind, options)
        elif kind == "STRING":
            problem = None if isinstance(value, str) else f"{value!r} is not a string"
        elif kind == "BOOLEAN":
            problem = None if isinstance(value, bool) else f"{value!r} is not a boolean"
        elif kind == "COMBO":
            choices = options.get("options", [])
            if (node["type"], name) in LOADER_FOLDERS:
                # the choices are whatever files this ComfyUI has; the file name is checked by check_models
                problem = None if isinstance(value, str) and value else f"{value!r} is not a file name"
            elif options.get("image_upload"):
                # LoadImage lists ComfyUI's input/ folder; example.png ships with ComfyUI
                problem = None if value in choices or value == "example.png" else f"{value!r} not in input/"
            elif value not in choices:
                problem = f"{value!r} is not one of {choices}"
        if problem:
            errors.append(f"{where}: widget {name!r}: {problem}")
    return errors


def _rect(node):
    x, y = node["pos"]
    w, h = node["size"]
    return (x, y - TITLE_HEIGHT, x + w, y + h)


def check_layout(wf) -> list[str]:
    """No two nodes overlap (title bars included); a group either holds a node whole or not at all."""
    errors = []
    rects = [(n["id"], _rect(n)) for n in wf["nodes"]]
    for i, (a, ra) in enumerate(rects):
        for b, rb in rects[i + 1:]:
            if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]:
                errors.append(f"nodes {a} and {b} overlap")
    for group in wf["groups"]:
        gx, gy, gw, gh = group["bounding"]
        for nid, (x0, y0, x1, y1) in rects:
            overlaps = x0 < gx + gw and gx < x1 and y0 < gy + gh and gy < y1
            inside = gx <= x0 and gy <= y0 and x1 <= gx + gw and y1 <= gy + gh
            if overlaps and not inside:
                errors.append(f"group {group['title']!r} cuts through node {nid}")
    return errors
