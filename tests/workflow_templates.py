"""The workflows made from ComfyUI's official templates: the template plus ASAG, nothing else changed.

The templates ship as the ``comfyui-workflow-templates`` package (its ``-json`` part holds the graphs and
``index.json``). ``.ci/run`` installs the version below from the registry into a folder outside every
venv and exports ``ASAG_TEMPLATES_DIR``; for a dev run::

    pip install --no-deps --target DIR comfyui-workflow-templates==0.11.97 \\
        comfyui-workflow-templates-core==0.3.388 comfyui-workflow-templates-json==0.1.123
    export ASAG_TEMPLATES_DIR=DIR

:func:`insert_asag` puts one ASAG node on every link that feeds a sampler's or guider's ``model`` input
(one node per distinct model output, so both Wan experts, both LTX stages and every subgraph get one),
in the graph or subgraph that holds the sampler; :func:`tests.workflow_notes.build` adds the MarkdownNote
and lays the graph out. :func:`strip_asag` takes them out again; the static tests compare what is left
with the template, so a changed setting, file, prompt or mode fails. ``python -m tests.workflow_notes``
rewrites workflows/ from the installed templates.
"""

from __future__ import annotations

import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.workflow_graph import LINK_FIELDS, SUBGRAPH_INPUT, SUBGRAPH_OUTPUT  # noqa: E402, F401

TEMPLATES_PACKAGE = "comfyui-workflow-templates"
TEMPLATES_VERSION = "0.11.97"
TEMPLATES_COMPANIONS = ("comfyui-workflow-templates-core==0.3.388", "comfyui-workflow-templates-json==0.1.123")
HOW_TO_INSTALL = (
    f"set ASAG_TEMPLATES_DIR to a folder holding {TEMPLATES_PACKAGE}=={TEMPLATES_VERSION}: "
    f"pip install --no-deps --target DIR {TEMPLATES_PACKAGE}=={TEMPLATES_VERSION} "
    + " ".join(TEMPLATES_COMPANIONS) + " (.ci/run does this)"
)
PACK_MIN_COMFYUI = "0.3.64"  # the oldest ComfyUI this pack supports

# The nodes whose ``model`` input samples: ASAG goes on the link into each.
GUIDED = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "CFGGuider", "BasicGuider", "DualCFGGuider")
ASAG_SIZE = (370, 58)  # wide enough for the node's current display name at the frontend's title font
ASAG_SCALE = 1.5  # the paper's best (arXiv 2511.07499)
NOTE_TITLE = "ASAG: read me"
NOTE_SIZE = (480, 660)


# ----------------------------------------------------------------------------------------------- the package

def templates_dir() -> str:
    """The installed templates' folder (``.../comfyui_workflow_templates_json/templates``)."""
    base = os.environ.get("ASAG_TEMPLATES_DIR", "")
    path = os.path.join(base, "comfyui_workflow_templates_json", "templates")
    if not base or not os.path.isfile(os.path.join(path, "index.json")):
        raise FileNotFoundError(f"no templates at ASAG_TEMPLATES_DIR={base!r}: {HOW_TO_INSTALL}")
    return path


def installed_version() -> str:
    """The version of the installed templates package (from its dist-info)."""
    base = os.environ.get("ASAG_TEMPLATES_DIR", "")
    prefix = "comfyui_workflow_templates-"
    found = [d for d in os.listdir(base) if d.startswith(prefix) and d.endswith(".dist-info")]
    if len(found) != 1:
        raise FileNotFoundError(f"no single {prefix}*.dist-info in {base}: {HOW_TO_INSTALL}")
    return found[0][len(prefix):-len(".dist-info")]


def load_template(name: str) -> dict:
    with open(os.path.join(templates_dir(), name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def index_entry(name: str) -> dict:
    """The template's entry in the package's index.json (title, minComfyUIVersion, usage...)."""
    with open(os.path.join(templates_dir(), "index.json"), encoding="utf-8") as f:
        index = json.load(f)
    for category in index:
        for entry in category["templates"]:
            if entry["name"] == name:
                return entry
    raise KeyError(f"template {name!r} is not in the index of {TEMPLATES_PACKAGE} {TEMPLATES_VERSION}")


def version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split("."))


# ----------------------------------------------------------------------------------------------- graphs

class Scope:
    """The root graph or one subgraph definition: its nodes and links as dicts."""

    def __init__(self, name, holder, array_links):
        self.name, self.holder, self.array_links = name, holder, array_links

    @property
    def nodes(self):
        return self.holder["nodes"]

    def links(self) -> dict:
        """id -> {id, origin_id, origin_slot, target_id, target_slot, type}."""
        if self.array_links:
            return {link[0]: dict(zip(LINK_FIELDS, link, strict=True)) for link in self.holder["links"]}
        return {link["id"]: link for link in self.holder["links"]}

    def add_link(self, link: dict):
        if self.array_links:
            self.holder["links"].append([link[k] for k in LINK_FIELDS])
        else:
            self.holder["links"].append(dict(link))

    def remove_link(self, link_id):
        self.holder["links"] = [link for link in self.holder["links"]
                                if (link[0] if self.array_links else link["id"]) != link_id]

    def node(self, node_id):
        return next(n for n in self.nodes if n["id"] == node_id)


def scopes(wf) -> list[Scope]:
    out = [Scope("root", wf, True)]
    for sub in wf.get("definitions", {}).get("subgraphs", []):
        out.append(Scope(sub["name"], sub, False))
    return out


def all_nodes(wf):
    return [n for scope in scopes(wf) for n in scope.nodes]


def subgraph_ids(wf) -> set:
    return {sub["id"] for sub in wf.get("definitions", {}).get("subgraphs", [])}


def _max_ids(wf):
    node_ids = [n["id"] for n in all_nodes(wf) if isinstance(n["id"], int)] + [wf.get("last_node_id", 0)]
    link_ids = [link_id for scope in scopes(wf) for link_id in scope.links()] + [wf.get("last_link_id", 0)]
    for sub in wf.get("definitions", {}).get("subgraphs", []):
        node_ids.append(sub.get("state", {}).get("lastNodeId", 0))
        link_ids.append(sub.get("state", {}).get("lastLinkId", 0))
    return max(node_ids), max(link_ids)


def _set_max_ids(wf, node_id, link_id):
    wf["last_node_id"], wf["last_link_id"] = node_id, link_id
    for sub in wf.get("definitions", {}).get("subgraphs", []):
        state = sub.setdefault("state", {})
        state["lastNodeId"], state["lastLinkId"] = node_id, link_id


def _rect(node, title=30):
    x, y = node["pos"]
    w, h = node["size"]
    return (x, y - title, x + w, y + h)


def _overlaps(a, b, pad=20):
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _cuts_group(rect, groups):
    for group in groups:
        gx, gy, gw, gh = group["bounding"]
        g = (gx, gy, gx + gw, gy + gh)
        inside = g[0] <= rect[0] and g[1] <= rect[1] and rect[2] <= g[2] and rect[3] <= g[3]
        if _overlaps(rect, g, pad=0) and not inside:
            return True
    return False


def free_spot(scope, near, size, avoid=()):
    """A free position for a node of ``size`` (no node within 20 px, title bars included, no group cut
    through): inside the graph's present extent where possible, then nearest to ``near``."""
    rects = [_rect(n) for n in scope.nodes] + list(avoid)
    extent = (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects))
    groups = scope.holder.get("groups", [])
    best = None
    for dy in range(-900, 901, 10):
        for dx in range(-900, 901, 10):
            x, y = near[0] + dx, near[1] + dy
            rect = (x, y - 30, x + size[0], y + size[1])
            if any(_overlaps(rect, r) for r in rects) or _cuts_group(rect, groups):
                continue
            growth = (max(extent[2], rect[2]) - min(extent[0], rect[0]) - extent[2] + extent[0]
                      + max(extent[3], rect[3]) - min(extent[1], rect[1]) - extent[3] + extent[1])
            score = (growth, dx * dx + dy * dy)
            if best is None or score < best[0]:
                best = (score, [x, y])
    if best is None:
        raise ValueError(f"no free place for a node near {near} in {scope.name}")
    return best[1]


def asag_node(node_id, pos, mode, links):
    return {
        "id": node_id, "type": "ASAG", "pos": pos, "size": list(ASAG_SIZE), "flags": {}, "order": 0, "mode": mode,
        "inputs": [{"localized_name": "model", "name": "model", "type": "MODEL", "link": None},
                   {"localized_name": "scale", "name": "scale", "type": "FLOAT", "widget": {"name": "scale"},
                    "link": None}],
        "outputs": [{"localized_name": "MODEL", "name": "MODEL", "type": "MODEL", "links": links}],
        "properties": {"Node name for S&R": "ASAG", "cnr_id": "comfyui-asag"},
        "widgets_values": [ASAG_SCALE],
    }


def guided_inputs(scope):
    """(node, input index, link) for every linked ``model`` input of a sampler or guider."""
    links = scope.links()
    out = []
    for node in scope.nodes:
        if node["type"] not in GUIDED:
            continue
        for index, inp in enumerate(node.get("inputs", [])):
            if inp["name"] == "model" and inp["type"] == "MODEL" and inp.get("link") is not None:
                out.append((node, index, links[inp["link"]]))
    return out


# Frontend 1.58.1 draws a title in the node's width less two title heights and cuts it with "..."
# beyond. Its title font's widths, rounded up from what the browser measured (SamplerCustomAdvanced
# 172 px, "Adversarial Sinkhorn Attention Guidance" 268 px): the browser test checks every title.
CHAR_WIDTHS = {"upper": 10.0, "lower": 7.9, "digit": 8.0, "space": 4.0, "other": 5.0}


def title_width(text: str) -> float:
    kinds = ("upper" if c.isupper() else "lower" if c.islower() else "digit" if c.isdigit()
             else "space" if c == " " else "other" for c in text)
    return sum(CHAR_WIDTHS[k] for k in kinds)


def display_names() -> dict:
    """This pack's nodes' display names (locales/en, which the host test keeps equal to the schemas)."""
    with open(os.path.join(ROOT, "locales", "en", "nodeDefs.json"), encoding="utf-8") as f:
        return {node: entry["display_name"] for node, entry in json.load(f).items()}


def widen_for_titles(wf) -> None:
    """Every node (subgraphs included) at least as wide as its title needs: its own title, else its
    display name (this pack's from locales/en; the core nodes these templates use are no longer than
    their type)."""
    names, subgraphs = display_names(), subgraph_ids(wf)
    for node in all_nodes(wf):
        if node["type"] in subgraphs or node["type"] in ("Note", "MarkdownNote", "Reroute"):
            continue
        text = node.get("title") or names.get(node["type"], node["type"])
        need = round(title_width(text) + 2 * TITLE_HEIGHT + 8)
        if node.get("size") and node["size"][0] < need:
            node["size"] = [need, node["size"][1]]


def insert_asag(template: dict) -> dict:
    """The template with an ASAG node on every sampler's model link (one per model output)."""
    wf = copy.deepcopy(template)
    next_node, next_link = _max_ids(wf)
    for scope in scopes(wf):
        by_origin = {}
        for node, index, link in guided_inputs(scope):
            by_origin.setdefault((link["origin_id"], link["origin_slot"]), []).append((node, index, link))
        placed = []
        for (origin_id, origin_slot), targets in sorted(by_origin.items(), key=lambda kv: str(kv[0])):
            next_node += 1
            asag_id = next_node
            modes = {node.get("mode", 0) for node, _, _ in targets}
            new_links = []
            for node, index, link in targets:
                scope.remove_link(link["id"])
                _drop_from_output(scope, link)
                next_link += 1
                new_links.append(next_link)
                scope.add_link({"id": next_link, "origin_id": asag_id, "origin_slot": 0, "target_id": node["id"],
                                "target_slot": index, "type": "MODEL"})
                node["inputs"][index]["link"] = next_link
            next_link += 1
            feed = next_link
            scope.add_link({"id": feed, "origin_id": origin_id, "origin_slot": origin_slot, "target_id": asag_id,
                            "target_slot": 0, "type": "MODEL"})
            _add_to_output(scope, origin_id, origin_slot, feed)
            first = min((t[0] for t in targets), key=lambda n: n["pos"][0])
            near = [first["pos"][0] - ASAG_SIZE[0] - 40, first["pos"][1]]
            pos = free_spot(scope, near, ASAG_SIZE, placed)
            node = asag_node(asag_id, pos, modes.pop() if len(modes) == 1 else 0, new_links)
            node["inputs"][0]["link"] = feed
            scope.nodes.append(node)
            placed.append(_rect(node))
    _set_max_ids(wf, next_node, next_link)
    _renumber_order(wf)
    widen_for_titles(wf)
    return wf


def _drop_from_output(scope, link):
    if link["origin_id"] == SUBGRAPH_INPUT:
        for inp in scope.holder["inputs"]:
            inp["linkIds"] = [i for i in inp.get("linkIds", []) if i != link["id"]]
        return
    out = scope.node(link["origin_id"])["outputs"][link["origin_slot"]]
    out["links"] = [i for i in out.get("links") or [] if i != link["id"]]


def _add_to_output(scope, origin_id, origin_slot, link_id):
    if origin_id == SUBGRAPH_INPUT:
        scope.holder["inputs"][origin_slot].setdefault("linkIds", []).append(link_id)
        return
    out = scope.node(origin_id)["outputs"][origin_slot]
    out["links"] = (out.get("links") or []) + [link_id]


def _renumber_order(wf):
    for scope in scopes(wf):
        for order, node in enumerate(sorted(scope.nodes, key=lambda n: (n.get("order", 0), str(n["id"])))):
            node["order"] = order


def strip_asag(wf: dict) -> dict:
    """``wf`` with every ASAG node and this pack's Note taken out, each ASAG's input linked straight to
    the nodes it fed (the inverse of :func:`tests.workflow_notes.build`)."""
    wf = copy.deepcopy(wf)
    for scope in scopes(wf):
        links = scope.links()
        for node in [n for n in scope.nodes if n["type"] == "ASAG"]:
            feed = links[node["inputs"][0]["link"]]
            scope.remove_link(feed["id"])
            _drop_from_output(scope, feed)
            for link_id in node["outputs"][0].get("links") or []:
                link = links[link_id]
                link["origin_id"], link["origin_slot"] = feed["origin_id"], feed["origin_slot"]
                scope.remove_link(link_id)
                scope.add_link(link)
                _add_to_output(scope, feed["origin_id"], feed["origin_slot"], link_id)
            scope.nodes.remove(node)
        scope.holder["nodes"] = [n for n in scope.nodes if n.get("title") != NOTE_TITLE]
    return wf


def settings(wf: dict) -> dict:
    """What a user's result depends on: every node's type, mode and widget values, what feeds each
    input, the subgraphs' interfaces and promoted widgets (positions, sizes and ids of links left out)."""
    out = {}
    for scope in scopes(wf):
        links = scope.links()
        for node in scope.nodes:
            feeds = []
            for inp in node.get("inputs", []):
                link = links.get(inp.get("link"))
                feeds.append((inp["name"], None if link is None else (link["origin_id"], link["origin_slot"])))
            out[f"{scope.name}/{node['id']}"] = {
                "type": node["type"], "mode": node.get("mode", 0), "widgets_values": node.get("widgets_values"),
                "inputs": feeds, "proxyWidgets": node.get("properties", {}).get("proxyWidgets"),
                "models": node.get("properties", {}).get("models"),
            }
        if scope.name != "root":
            out[f"{scope.name}/interface"] = {
                "inputs": [(i["name"], i["type"]) for i in scope.holder.get("inputs", [])],
                "outputs": [(o["name"], o["type"]) for o in scope.holder.get("outputs", [])],
                "output_links": sorted((links[i]["origin_id"], links[i]["origin_slot"])
                                       for o in scope.holder.get("outputs", []) for i in o.get("linkIds", [])),
            }
    return out


def settings_diff(a: dict, b: dict) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            out.append(f"{key}: only in {'the workflow' if key in a else 'the template'}")
            continue
        for field in b[key]:
            if a[key].get(field) != b[key][field]:
                out.append(f"{key} ({b[key].get('type', '')}) {field}: workflow {a[key].get(field)!r}, "
                           f"template {b[key][field]!r}")
    return out


def loader_files(wf) -> list[tuple[str, str, str]]:
    """(file, models/ folder, download link) for every model file the graph names in a loader's
    ``properties.models`` (as the official templates declare them), in graph order, once each."""
    seen, out = set(), []
    for node in all_nodes(wf):
        for model in node.get("properties", {}).get("models", []) or []:
            key = (model["name"], model["directory"])
            if key not in seen:
                seen.add(key)
                out.append((model["name"], model["directory"], model.get("url", "")))
    return out


# ----------------------------------------------------------------------------------------------- layout

# Frontend 1.58.1 opens a template fitted to its nodes: scale = FIT_ZOOM x min(window / bounds), the
# bounds being every root node with its title bar plus FIT_PADDING (LGraphCanvas.fitToBounds with its
# default zoom, createBounds' padding); below about 0.6 it draws nodes as empty boxes.
FIT_ZOOM, FIT_PADDING, FIT_MIN_SIDE = 0.75, 10, 300
FIT_TARGET = 0.6  # the scale each workflow should open at in the newest frontend
WINDOW = (1600, 1000)
TITLE_HEIGHT = 30
NOTE_WIDTH = 400
OUTPUT_VIEWERS = ("SaveImage", "PreviewImage", "SaveVideo")
COLUMN_GAP = 40
TARGET_HEIGHT = 1000  # the notes column's height where the working nodes are lower
# Where a dropped file's saved view puts the graph, in canvas pixels at WINDOW: clear of the sidebar,
# the tab bar and the Run toolbar that 1.43 and 1.58 draw over their full-window canvas, and inside
# 1.27's canvas, which starts right of its sidebar and below its menu, and above its zoom buttons at the
# bottom right (the browser test checks each)
SAFE_AREA = (72, 104, 1500, 860)


def root_bounds(wf) -> tuple:
    """(x, y, width, height) of the root graph's nodes, title bars and the frontend's padding included."""
    nodes = wf["nodes"]
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] - TITLE_HEIGHT for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    return (x0 - FIT_PADDING, y0 - FIT_PADDING, x1 - x0 + 2 * FIT_PADDING, y1 - y0 + 2 * FIT_PADDING)


def fit_scale(wf, window=WINDOW) -> float:
    """The scale frontend 1.58.1 opens ``wf`` at from its template browser in a ``window``-sized page."""
    _, _, width, height = root_bounds(wf)
    return FIT_ZOOM * min(window[0] / max(width, FIT_MIN_SIDE), window[1] / max(height, FIT_MIN_SIDE))


def _compress(items, axis, gap):
    """Shift per item along ``axis`` (0 x, 1 y) that closes every empty strip wider than ``gap``."""
    spans = sorted((lo, hi) for lo, hi in items)
    shifts, removed, end = [], 0, None
    for lo, hi in spans:
        if end is not None and lo - end > gap:
            removed += lo - end - gap
        shifts.append((lo, removed))
        end = hi if end is None else max(end, hi)

    def shift(lo):
        return max((s for start, s in shifts if start <= lo), default=0)
    return shift


def compact_root(wf, notes_first=()) -> None:
    """Lay the root graph out compactly: the working nodes (and their groups) keep their arrangement with
    the empty strips between them closed, and the notes (``notes_first`` on top) stack in one column of
    NOTE_WIDTH to their left, as tall as the working nodes (at least TARGET_HEIGHT), scrolling inside."""
    from tests.workflow_checks import NOTE_TYPES

    notes = [n for n in wf["nodes"] if n["type"] in NOTE_TYPES]
    notes.sort(key=lambda n: (n["id"] not in notes_first, n["pos"][1]))
    work = [n for n in wf["nodes"] if n["type"] not in NOTE_TYPES]
    for node in work:
        if node["type"] in OUTPUT_VIEWERS:  # a preview pane, as wide as a note; the picture scales into it
            node["size"] = [min(node["size"][0], NOTE_WIDTH), min(node["size"][1], 600)]
    groups = [g for g in wf.get("groups", []) if any(_inside(n, g) for n in work)]
    wf["groups"] = groups
    for axis, size_index, top in ((0, 0, 0), (1, 1, TITLE_HEIGHT)):
        spans = [(n["pos"][axis] - top, n["pos"][axis] + n["size"][size_index]) for n in work]
        spans += [(g["bounding"][axis], g["bounding"][axis] + g["bounding"][axis + 2]) for g in groups]
        shift = _compress(spans, axis, COLUMN_GAP)
        for group in groups:
            group["bounding"][axis] -= shift(group["bounding"][axis])
        for node in work:
            node["pos"][axis] -= shift(node["pos"][axis] - top)
    best = None
    for place in ("left", "below"):
        for width in (NOTE_WIDTH, 340, 300):
            _place_notes(notes, work, place, width)
            fit = fit_scale(wf)
            # the widest notes that keep the target (with a margin for rounding), else the best fit
            score = (fit >= FIT_TARGET + 0.01, width if fit >= FIT_TARGET + 0.01 else 0, fit)
            if best is None or score > best[0]:
                best = (score, place, width)
    _place_notes(notes, work, best[1], best[2])


def _place_notes(notes, work, place, width):
    """Notes in one column left of the working nodes (as tall as they are, at least TARGET_HEIGHT), or
    in one row below them (within the height that keeps the whole at FIT_TARGET)."""
    x0 = min(n["pos"][0] for n in work)
    y0 = min(n["pos"][1] for n in work)
    y1 = max(n["pos"][1] + n["size"][1] for n in work)
    if place == "left":
        height = max(y1 - y0, TARGET_HEIGHT)
        total = sum(n["size"][1] + TITLE_HEIGHT + COLUMN_GAP for n in notes) - COLUMN_GAP
        factor = min(1.0, height / total) if total > 0 else 1.0
        y = y0
        for note in notes:
            note["size"] = [width, max(120, round(note["size"][1] * factor))]
            note["pos"] = [x0 - COLUMN_GAP - width, y]
            y += note["size"][1] + TITLE_HEIGHT + COLUMN_GAP
        return
    room = WINDOW[1] * FIT_ZOOM / FIT_TARGET - 2 * FIT_PADDING - (y1 - y0 + TITLE_HEIGHT) - COLUMN_GAP - TITLE_HEIGHT
    x = x0
    for note in notes:
        note["size"] = [width, max(150, round(min(note["size"][1], room)))]
        note["pos"] = [x, y1 + COLUMN_GAP + TITLE_HEIGHT]
        x += width + COLUMN_GAP


def _inside(node, group) -> bool:
    gx, gy, gw, gh = group["bounding"]
    x, y = node["pos"]
    return gx <= x and gy <= y - TITLE_HEIGHT and x + node["size"][0] <= gx + gw and y + node["size"][1] <= gy + gh


def saved_view(wf, safe_area) -> dict:
    """extra.ds that shows the whole root graph inside ``safe_area`` (left, top, right, bottom in page
    pixels: clear of the sidebar, the tab bar and the Run toolbar) when the file is dropped in."""
    x, y, width, height = root_bounds(wf)
    left, top, right, bottom = safe_area
    scale = min((right - left) / width, (bottom - top) / height, 1.0)
    return {"scale": round(scale, 4), "offset": [round(left / scale - x, 1), round(top / scale - y, 1)]}
