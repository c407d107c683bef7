"""Reading a saved workflow's graph: nodes by type, widget values by name, links followed both ways,
the model chain into a sampler, whether a sampler's result is saved; and what of a graph the frontend
must keep when it saves it again. Shared by the static and the browser workflow tests."""

from __future__ import annotations

import copy

SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")


def _links(wf):
    return {link[0]: link for link in wf["links"]}


def _nodes(wf):
    return {node["id"]: node for node in wf["nodes"]}


SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # a subgraph's input and output nodes in its links
# a link's fields: the root graph saves a link as a list in this order, a subgraph as a dict of them
LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def flatten(wf):
    """What runs: ``wf`` with every subgraph node replaced by its definition's nodes (ids
    ``"<subgraph node id>:<inner id>"``), their links joined through the subgraph's inputs (by name) and
    outputs, as the frontend does when it makes the prompt. A subgraph node's non-zero mode (muted,
    bypassed) goes to the nodes inside. Links get new ids; every input and output names its links again."""
    definitions = {sub["id"]: sub for sub in wf.get("definitions", {}).get("subgraphs", [])}
    nodes = copy.deepcopy(wf["nodes"])
    links = [list(link) for link in wf["links"]]
    while True:
        instance = next((n for n in nodes if n["type"] in definitions), None)
        if instance is None:
            break
        nodes, links = _expand(nodes, links, instance, definitions[instance["type"]])
    links = [[i + 1, *link[1:]] for i, link in enumerate(links)]
    _relink(nodes, links)
    flat = {k: v for k, v in wf.items() if k != "definitions"}
    flat.update(nodes=nodes, links=links)
    return flat


def _expand(nodes, links, instance, sub):
    prefix = f"{instance['id']}:"
    inner = copy.deepcopy(sub["nodes"])
    for node in inner:
        node["id"] = prefix + str(node["id"])
        if instance.get("mode", 0):
            node["mode"] = instance["mode"]
    into = {instance["inputs"][link[4]]["name"]: link for link in links if link[3] == instance["id"]}
    out_of = [link for link in links if link[1] == instance["id"]]
    kept = [link for link in links if instance["id"] not in (link[1], link[3])]
    for link in sub["links"]:
        origin = (link["origin_id"], link["origin_slot"])
        if link["origin_id"] == SUBGRAPH_INPUT:
            feed = into.get(sub["inputs"][link["origin_slot"]]["name"])
            if feed is None:
                continue  # an input the subgraph node leaves open: the inner widget's own value
            origin = (feed[1], feed[2])
        else:
            origin = (prefix + str(origin[0]), origin[1])
        if link["target_id"] == SUBGRAPH_OUTPUT:
            kept += [[None, *origin, out[3], out[4], out[5]] for out in out_of if out[2] == link["target_slot"]]
        else:
            kept.append([None, *origin, prefix + str(link["target_id"]), link["target_slot"], link["type"]])
    return [n for n in nodes if n is not instance] + inner, kept


def _relink(nodes, links):
    by_id = {n["id"]: n for n in nodes}
    for node in nodes:
        for inp in node.get("inputs", []):
            inp["link"] = None
        for out in node.get("outputs", []):
            out["links"] = []
    for link_id, origin, origin_slot, target, target_slot, _ in links:
        by_id[origin]["outputs"][origin_slot]["links"].append(link_id)
        by_id[target]["inputs"][target_slot]["link"] = link_id


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
    """What decides a sampler's seed: ('node', id) when linked, else ('value', n). A
    SamplerCustomAdvanced's seed is its RandomNoise's."""
    if sampler["type"] == "SamplerCustomAdvanced":
        sampler = source(wf, sampler, "noise")[0]
    name = "seed" if sampler["type"] == "KSampler" else "noise_seed"
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


DECODERS = ("VAEDecode", "VAEDecodeTiled")
SAVERS = ("SaveImage", "SaveVideo")


def reaches_save(wf, sampler) -> bool:
    """Is the sampler's first output saved: decoded (VAEDecode / VAEDecodeTiled) into a SaveImage, or into
    CreateVideo and a SaveVideo, directly or through the next sampler it hands its latent to (a
    two-expert KSamplerAdvanced chain)?"""
    for dst, input_name in consumers(wf, sampler, 0):
        if dst["type"] in SAMPLERS and input_name == "latent_image" and reaches_save(wf, dst):
            return True
        if dst["type"] not in DECODERS:
            continue
        for image_dst, _ in consumers(wf, dst, 0):
            if image_dst["type"] == "SaveImage":
                return True
            if image_dst["type"] == "CreateVideo" and any(
                    d["type"] == "SaveVideo" for d, _ in consumers(wf, image_dst, 0)):
                return True
    return False


def adds_noise(sampler) -> bool:
    """Does the sampler draw noise (a KSamplerAdvanced with add_noise 'disable' continues another's)?"""
    if sampler["type"] == "KSamplerAdvanced":
        return widget(sampler, "add_noise") == "enable"
    if sampler["type"] == "SamplerCustom":
        return widget(sampler, "add_noise") is True
    return True


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
        nodes[str(n["id"])] = {
            "type": n["type"],
            "title": n.get("title"),
            "pos": [round(v, 3) for v in n["pos"]],
            "mode": n.get("mode", 0),
            "widgets_values": n.get("widgets_values") or [],  # 1.58.1 saves none as null
            "inputs": [(i["name"], i["type"], i.get("link"), (i.get("widget") or {}).get("name"))
                       for i in n.get("inputs", [])],
            "outputs": [(o["name"], o["type"], sorted(o.get("links") or [])) for o in n.get("outputs", [])],
            "models": n.get("properties", {}).get("models"),
        }
    links = [[link[k] for k in LINK_FIELDS] if isinstance(link, dict) else list(link) for link in wf["links"]]
    by_id = {str(n["id"]): n for n in wf["nodes"]}

    def input_name(node_id, slot):
        # by name: a frontend lists a subgraph node's widget inputs before its linked ones
        inputs = by_id.get(str(node_id), {}).get("inputs", [])
        return inputs[slot]["name"] if 0 <= slot < len(inputs) else slot
    links = sorted([link[0], str(link[1]), link[2], str(link[3]), input_name(link[3], link[4]), link[5]]
                   for link in links)
    return {"nodes": nodes, "links": links,
            "groups": sorted((g["title"], tuple(g["bounding"])) for g in wf["groups"])}


# What a frontend may rewrite in a template's file (saved by a newer frontend) without changing what runs:
# the widget inputs it lists and the widget values of promoted or version-dependent widgets. The
# validation test checks what the editor makes of them.
TEMPLATE_KEYS = ("type", "title", "pos", "mode", "models")


def summary_diff(saved: dict, shipped: dict, keys=None, groups=True) -> list[str]:
    """Readable differences between two graph_summary() results (in ``keys`` only, when given; the
    groups too, unless ``groups`` is false)."""
    out = []
    a, b = saved["nodes"], shipped["nodes"]
    for nid in sorted(set(a) | set(b)):
        if nid not in a or nid not in b:
            out.append(f"node {nid}: only in {'the saved graph' if nid in a else 'the file'}")
            continue
        for key in keys or b[nid]:
            if a[nid].get(key) != b[nid][key]:
                out.append(f"node {nid} ({b[nid]['type']}) {key}: saved {a[nid].get(key)!r}, file {b[nid][key]!r}")
    for key in ("links", "groups") if groups else ("links",):
        if saved[key] != shipped[key]:
            out.append(f"{key}: saved {saved[key]!r}, file {shipped[key]!r}")
    return out
