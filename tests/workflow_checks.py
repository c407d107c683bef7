"""What the shipped workflows (workflows/*.json) must satisfy, shared by the static and the browser tests.

The workflows are in the ComfyUI frontend's own save format (graph version 0.4, as frontend 1.27 writes
it, with null slot fields left out). Node definitions come from the real ComfyUI when one is found
(``INPUT_TYPES`` of each class, which ComfyUI also provides for V3 ``io.Schema`` nodes); without one,
this pack's nodes are checked against ``OUR_NODES`` below and core nodes only by name.
"""

from __future__ import annotations

import json
import math
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")

WORKFLOW_FILES = (
    "sd15_asag.json",
    "sdxl_asag.json",
    "sdxl_asag_guider.json",
    "sd35_asag.json",
    "flux_asag.json",
    "unconditional_asag.json",
    "controlnet_asag.json",
    "ipadapter_asag.json",
    "ablation_asag.json",
)

# Every model file a workflow (a loader widget, a download link or a Note) names: official release
# file names and the ComfyUI models/ subfolder each goes into. README lists the same table.
MODEL_FILES = {
    "v1-5-pruned-emaonly-fp16.safetensors": "checkpoints",
    "sd_xl_base_1.0.safetensors": "checkpoints",
    "sd3.5_large.safetensors": "checkpoints",
    "sd3.5_medium.safetensors": "checkpoints",
    "clip_l.safetensors": "text_encoders",
    "clip_g.safetensors": "text_encoders",
    "t5xxl_fp16.safetensors": "text_encoders",
    "flux1-dev.safetensors": "diffusion_models",
    "ae.safetensors": "vae",
    "control_v11p_sd15_canny_fp16.safetensors": "controlnet",
    "control_v11p_sd15_canny.pth": "controlnet",
    "ip-adapter-plus_sd15.safetensors": "ipadapter",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": "clip_vision",
}

# Where each file is published (the download links the workflows embed must be one of these).
_HF = "https://huggingface.co/"
MODEL_SOURCES = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        _HF + "Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",),
    "sd_xl_base_1.0.safetensors": (
        _HF + "stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",),
    "sd3.5_large.safetensors": (
        _HF + "stabilityai/stable-diffusion-3.5-large/resolve/main/sd3.5_large.safetensors",),
    "sd3.5_medium.safetensors": (
        _HF + "stabilityai/stable-diffusion-3.5-medium/resolve/main/sd3.5_medium.safetensors",),
    "clip_l.safetensors": (
        _HF + "stabilityai/stable-diffusion-3.5-large/resolve/main/text_encoders/clip_l.safetensors",
        _HF + "comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    ),
    "clip_g.safetensors": (
        _HF + "stabilityai/stable-diffusion-3.5-large/resolve/main/text_encoders/clip_g.safetensors",),
    "t5xxl_fp16.safetensors": (
        _HF + "stabilityai/stable-diffusion-3.5-large/resolve/main/text_encoders/t5xxl_fp16.safetensors",
        _HF + "comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
    ),
    "flux1-dev.safetensors": (_HF + "black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",),
    "ae.safetensors": (_HF + "black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors",),
    "control_v11p_sd15_canny_fp16.safetensors": (
        _HF + "comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_canny_fp16.safetensors",),
    "control_v11p_sd15_canny.pth": (_HF + "lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_canny.pth",),
    "ip-adapter-plus_sd15.safetensors": (
        _HF + "h94/IP-Adapter/resolve/main/models/ip-adapter-plus_sd15.safetensors",),
    # published as models/image_encoder/model.safetensors; ComfyUI_IPAdapter_plus wants it renamed
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": (
        _HF + "h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",),
}

# (loader node, widget) -> the models/ subfolder the file it names must live in
LOADER_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("VAELoader", "vae_name"): "vae",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("ControlNetLoader", "control_net_name"): "controlnet",
}

MODEL_FILE_RE = re.compile(r"[\w./\-]+\.(?:safetensors|sft|ckpt|pth|pt|bin|gguf)\b")

# Nodes that live only in the frontend (no Python class): type -> widget names
FRONTEND_ONLY = {"Note": ("text",), "MarkdownNote": ("text",)}
NOTE_TYPES = ("Note", "MarkdownNote")

OURS = ("ASAG", "ASAGAdvanced", "ASAGGuider")

# Core node types the workflows use: the fallback when no ComfyUI is found (with one, the host's
# NODE_CLASS_MAPPINGS decides).
EXPECTED_CORE = frozenset({
    "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
    "PreviewImage", "PrimitiveInt", "SamplerCustomAdvanced", "RandomNoise", "KSamplerSelect", "BasicScheduler",
    "KarrasScheduler", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader", "FluxGuidance",
    "EmptySD3LatentImage", "ModelSamplingSD3", "ConditioningZeroOut", "LoadImage", "Canny", "ControlNetLoader",
    "ControlNetApplyAdvanced",
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
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


def load(name: str) -> dict:
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def shipped_files() -> list[str]:
    return sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))


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

def _links(wf):
    return {link[0]: link for link in wf["links"]}


def _nodes(wf):
    return {node["id"]: node for node in wf["nodes"]}


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
        if node.get("type") not in NOTE_TYPES and node.get("type") not in ("SaveImage", "PreviewImage"):
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
    values = node.get("widgets_values", [])
    if not isinstance(values, list) or len(values) != len(widgets):
        return errors + [f"{where}: {len(values)} widget values for widgets {[w[0] for w in widgets]}"]
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


def check_models(wf) -> list[str]:
    """Model files: official names (MODEL_FILES), in the right folder, with official download links."""
    errors = []
    for node in wf["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        values = node.get("widgets_values") or []
        strings = [v for v in values if isinstance(v, str)]
        for text in strings:
            for token in MODEL_FILE_RE.findall(text):
                name = token.rsplit("/", 1)[-1]
                if name not in MODEL_FILES:
                    errors.append(f"{where}: names {name!r}, not an official file in MODEL_FILES")
                    continue
                parts = token.split("/")
                folder = MODEL_FILES[name]
                if len(parts) >= 3 and parts[-3] == "models" and parts[-2] != folder:
                    errors.append(f"{where}: puts {name} in models/{parts[-2]}, it belongs in models/{folder}")
        for (ntype, name_of_widget), folder in LOADER_FOLDERS.items():
            if ntype == node["type"]:
                name = widget(node, name_of_widget)
                if MODEL_FILES.get(name) != folder:
                    errors.append(f"{where}: {name_of_widget}={name!r} is not an official {folder}/ file")
        for model in node.get("properties", {}).get("models", []):
            name = model.get("name")
            if MODEL_FILES.get(name) != model.get("directory"):
                errors.append(f"{where}: download entry {name!r} -> {model.get('directory')!r} contradicts MODEL_FILES")
            if model.get("url", "").split("?")[0] not in MODEL_SOURCES.get(name, ()):
                errors.append(f"{where}: download link {model.get('url')!r} is not an official source of {name}")
            if name not in values:
                errors.append(f"{where}: download entry {name!r} is not what the node selects")
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


# ----------------------------------------------------------------------------------------------- graph helpers

def nodes_of(wf, node_type):
    return [n for n in wf["nodes"] if n["type"] == node_type]


# widgets followed by a control_after_generate value in widgets_values (in the nodes the workflows use;
# check_node_against_spec derives the same from the real definitions)
CONTROL_AFTER = {("KSampler", "seed"), ("KSamplerAdvanced", "noise_seed"), ("RandomNoise", "noise_seed"),
                 ("SamplerCustom", "noise_seed"), ("PrimitiveInt", "value")}


def widget(node, name):
    """The saved value of a node's widget, found through the node's widget inputs."""
    values = list(node.get("widgets_values", []))
    position = 0
    for inp in node.get("inputs", []):
        if "widget" not in inp:
            continue
        if inp["name"] == name:
            return values[position]
        position += 2 if (node["type"], inp["name"]) in CONTROL_AFTER else 1
    raise KeyError(f"{node['type']} has no widget {name!r}")


def source(wf, node, input_name):
    """(node, output slot) feeding ``input_name`` of ``node``, or None."""
    inp = next((i for i in node.get("inputs", []) if i["name"] == input_name), None)
    if inp is None or inp.get("link") is None:
        return None
    link = _links(wf)[inp["link"]]
    return _nodes(wf)[link[1]], link[2]


def consumers(wf, node, slot=0):
    """(node, input name) pairs fed by output ``slot`` of ``node``."""
    nodes, links = _nodes(wf), _links(wf)
    out = node.get("outputs", [])[slot]
    result = []
    for lid in out.get("links") or []:
        link = links[lid]
        dst = nodes[link[3]]
        result.append((dst, dst["inputs"][link[4]]["name"]))
    return result


def seed_of(wf, sampler):
    """What decides a sampler's seed: ('node', id) when linked, else ('value', n)."""
    name = "noise_seed" if sampler["type"] == "RandomNoise" else "seed"
    src = source(wf, sampler, name)
    if src is not None:
        return ("node", src[0]["id"])
    return ("value", widget(sampler, name))


def upstream(wf, node, input_name="model"):
    """The chain of nodes feeding ``input_name`` (following each node's first input of that type)."""
    chain = []
    current = source(wf, node, input_name)
    while current is not None:
        chain.append(current[0])
        model_inputs = [i["name"] for i in current[0].get("inputs", []) if i["type"] == "MODEL"]
        current = source(wf, current[0], model_inputs[0]) if model_inputs else None
    return chain


def reaches_save(wf, sampler) -> bool:
    """Does the sampler's first output go through a VAEDecode into a SaveImage?"""
    for dst, _ in consumers(wf, sampler, 0):
        if dst["type"] == "VAEDecode" and any(d["type"] == "SaveImage" for d, _ in consumers(wf, dst, 0)):
            return True
    return False


def strip_nulls(wf):
    """What this repository stores of a frontend serialisation: null slot fields dropped."""
    for key in [k for k, v in wf.items() if v is None]:
        del wf[key]
    for node in wf["nodes"]:
        for key in [k for k, v in node.items() if v is None]:
            del node[key]
        for slot in node.get("inputs", []) + node.get("outputs", []):
            for key in [k for k, v in slot.items() if v is None and k not in ("link", "links")]:
                del slot[key]
    return wf


def graph_summary(wf) -> dict:
    """The parts of a workflow the frontend must keep unchanged when it loads and saves it again."""
    nodes = {}
    for n in wf["nodes"]:
        nodes[n["id"]] = {
            "type": n["type"],
            "title": n.get("title"),
            "pos": [round(v, 3) for v in n["pos"]],
            "mode": n.get("mode", 0),
            "widgets_values": n.get("widgets_values"),
            "inputs": [(i["name"], i["type"], i.get("link"), (i.get("widget") or {}).get("name"))
                       for i in n.get("inputs", [])],
            "outputs": [(o["name"], o["type"], sorted(o.get("links") or [])) for o in n.get("outputs", [])],
            "models": n.get("properties", {}).get("models"),
        }
    return {"nodes": nodes, "links": sorted(map(list, wf["links"])),
            "groups": sorted((g["title"], tuple(g["bounding"])) for g in wf["groups"])}


def summary_diff(saved: dict, shipped: dict) -> list[str]:
    """Readable differences between two graph_summary() results."""
    out = []
    a, b = saved["nodes"], shipped["nodes"]
    for nid in sorted(set(a) | set(b)):
        if nid not in a or nid not in b:
            out.append(f"node {nid}: only in {'the saved graph' if nid in a else 'the file'}")
            continue
        for key in b[nid]:
            if a[nid].get(key) != b[nid][key]:
                out.append(f"node {nid} ({b[nid]['type']}) {key}: saved {a[nid].get(key)!r}, file {b[nid][key]!r}")
    for key in ("links", "groups"):
        if saved[key] != shipped[key]:
            out.append(f"{key}: saved {saved[key]!r}, file {shipped[key]!r}")
    return out
