"""The frontend translations in locales/<lang>/ (nodeDefs.json, main.json), shared by the static,
host and browser tests.

Format (ComfyUI's app/custom_node_manager.py serves them at /i18n; the frontend reads them as):
``nodeDefs.json``: ``{node_id: {display_name, description, inputs: {input: {name, tooltip}},
outputs: {"<index>": {name, tooltip}}}}``; ``main.json``: ``{"nodeCategories": {segment: text}}``,
one entry per category path segment the frontend does not translate itself (here only ``asag``).

``locales/en`` is the node schemas' own text (the host test checks it equals them, so it cannot
drift); regenerate it after changing a schema with ``python -m tests.locale_checks --write-en``.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALES_DIR = os.path.join(ROOT, "locales")
LANGUAGES = ("en", "zh")
OWN_CATEGORY_SEGMENTS = ("asag",)


def load(lang: str, name: str) -> dict:
    with open(os.path.join(LOCALES_DIR, lang, name), encoding="utf-8") as f:
        return json.load(f)


def check_node_defs(node_defs: dict, nodes: dict) -> list[str]:
    """Every node, input and output of ``nodes`` ({node_id: {"required": {...}, "outputs": (...)}},
    the shape of workflow_checks.OUR_NODES) translated, with nothing extra; non-empty texts."""
    errors = []
    if set(node_defs) != set(nodes):
        errors.append(f"nodes: translated {sorted(node_defs)}, the pack has {sorted(nodes)}")
    for node_id, spec in nodes.items():
        entry = node_defs.get(node_id, {})
        for key in ("display_name", "description"):
            if not str(entry.get(key, "")).strip():
                errors.append(f"{node_id}: no {key}")
        inputs = {**spec.get("required", {}), **spec.get("optional", {})}
        translated = entry.get("inputs", {})
        for name in sorted(set(inputs) - set(translated)):
            errors.append(f"{node_id}: input {name!r} has no translation")
        for name in sorted(set(translated) - set(inputs)):
            errors.append(f"{node_id}: translation names input {name!r}, which the node does not have")
        outputs = {str(i) for i in range(len(spec["outputs"]))}
        translated_outputs = sorted(entry.get("outputs", {}))
        if set(translated_outputs) != outputs:
            errors.append(f"{node_id}: outputs translated {translated_outputs}, expected {sorted(outputs)}")
        for kind, items in (("input", translated), ("output", entry.get("outputs", {}))):
            for name, text in items.items():
                for field in ("name", "tooltip"):
                    if not str(text.get(field, "")).strip():
                        errors.append(f"{node_id}: {kind} {name!r} has no {field}")
    return errors


def node_defs_from_schemas(infos: dict) -> dict:
    """The English nodeDefs.json from the nodes' own V1 info (``GET_NODE_INFO_V1()``)."""
    out = {}
    for node_id, info in infos.items():
        inputs = {}
        for section in ("required", "optional"):
            for name, (_, options) in info["input"].get(section, {}).items():
                inputs[name] = {"name": name, "tooltip": options.get("tooltip", "")}
        out[node_id] = {
            "display_name": info["display_name"],
            "description": info["description"],
            "inputs": inputs,
            "outputs": {str(i): {"name": name, "tooltip": tip} for i, (name, tip)
                        in enumerate(zip(info["output_name"], info["output_tooltips"], strict=True))},
        }
    return out


def host_infos(host, node_ids) -> dict:
    return {node_id: host.node(node_id).GET_NODE_INFO_V1() for node_id in node_ids}


def _write_en():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from comfy_host import HOW_TO, start_host
    from workflow_checks import OURS

    host = start_host()
    if host is None:
        raise SystemExit(HOW_TO)
    path = os.path.join(LOCALES_DIR, "en", "nodeDefs.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(node_defs_from_schemas(host_infos(host, OURS)), f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__" and sys.argv[1:] == ["--write-en"]:
    _write_en()
