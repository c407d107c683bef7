"""Which official template each shipped workflow follows, and the MarkdownNote it gets.

The Note is generated (:func:`note_text`) from the template (its index entry: title, minimum ComfyUI;
its loaders' download links), where the ASAG nodes went (:func:`tests.workflow_templates.insert_asag`)
and the cost table (docs/cost_table.json, ``python -m benchmarks.cost``). A family the table has no
row for says so (NOT_COUNTED, with the reason in COST_REMARKS) instead of a number.
"""

from __future__ import annotations

import json
import os

from tests import workflow_templates as wt

COST_TABLE = os.path.join(wt.ROOT, "docs", "cost_table.json")
NOT_COUNTED = "not counted"

# file -> (template, family, cost table row or None, what the row counts when it is not the template's own model)
TEMPLATE_WORKFLOWS = {
    "z_image_turbo_asag.json": ("image_z_image_turbo", "Z-Image-Turbo", "zimage_turbo", ""),
    "qwen_image_asag.json": ("image_qwen_image", "Qwen-Image", "qwen_image", ""),
    "qwen_image_edit_asag.json": ("image_qwen_image_edit", "Qwen-Image-Edit", "qwen_image_edit", ""),
    "flux2_klein_asag.json": ("image_flux2_klein_text_to_image", "FLUX.2 Klein 4B", "flux2_klein_4b", ""),
    "flux_dev_asag.json": ("flux_dev_full_text_to_image", "FLUX.1 dev", "flux_dev", ""),
    "flux_kontext_asag.json": ("flux_kontext_dev_basic", "FLUX.1 Kontext dev", "flux_dev",
                               "the table's Flux dev row, FLUX.1 dev, the same architecture with the same model "
                               "class and sizes; Kontext adds the reference image's tokens, so its cost per step "
                               "differs somewhat"),
    "sdxl_asag.json": ("image_sdxl_simple", "SDXL", "sdxl", ""),
    "ltx23_i2v_asag.json": ("video_ltx2_3_i2v", "LTX-2.3", None, ""),
    "wan22_14b_t2v_asag.json": ("video_wan2_2_14B_t2v", "Wan 2.2 14B", "wan22_14b", ""),
    "wan22_14b_i2v_asag.json": ("video_wan2_2_14B_i2v", "Wan 2.2 14B", "wan22_14b",
                                "the text-to-video expert, which differs from the image-to-video one only in "
                                "its input channels"),
    "wan22_5b_ti2v_asag.json": ("video_wan2_2_5B_ti2v", "Wan 2.2 5B", "wan22_5b", ""),
    "hunyuan_video15_t2v_asag.json": ("video_hunyuan_video_1.5_720p_t2v", "HunyuanVideo 1.5", "hunyuan_video15", ""),
}
# what the cost paragraph adds: why a workflow has no row, or what of it the row leaves out
COST_REMARKS = {
    "ltx23_i2v_asag.json": "docs/cost_table.json has no LTX-2.3 row; its LTX-2 19B rows count a different "
                           "configuration",
    "hunyuan_video15_t2v_asag.json": "The 1080p super-resolution stage (bypassed by default) is not counted.",
}

# Workflows that open below wt.FIT_TARGET from the template browser, and why (the Note says it with the scales)
OPENS_SMALL = {
    "hunyuan_video15_t2v_asag.json": (
        "the template is {nodes} nodes in one graph with no subgraphs, its base stage above its bypassed 1080p "
        "stage: at their sizes the nodes cover more canvas than a 1600×1000 window shows at 0.6, even with no gap "
        "between them. "
        "Only moving the template's nodes into subgraphs would fit it, and that would no longer be the template "
        "plus ASAG (the 1080p stage is enabled with Ctrl-B on its group's nodes). Zoom in on the part you edit"),
}

PAPER = "[arXiv 2511.07499](https://arxiv.org/abs/2511.07499)"
PACK_URL = "https://github.com/comfyui-asag/comfyui-asag"


def load_cost_table() -> dict:
    with open(COST_TABLE, encoding="utf-8") as f:
        return json.load(f)["models"]


def min_comfyui(template_name: str) -> tuple[str, str]:
    """(version, why): the template's own minimum, or this pack's where that is higher."""
    template_min = wt.index_entry(template_name).get("minComfyUIVersion", "0.0.1")
    if wt.version_tuple(template_min) >= wt.version_tuple(wt.PACK_MIN_COMFYUI):
        return template_min, "the template's minComfyUIVersion"
    return wt.PACK_MIN_COMFYUI, "this pack's minimum (the template asks for " + template_min + ")"


def needs_comfyui(file_name: str) -> tuple:
    """The ComfyUI version a shipped workflow needs, as a tuple: its template's minimum (see
    :func:`min_comfyui`), or this pack's for the pack's own workflows."""
    if file_name not in TEMPLATE_WORKFLOWS:
        return wt.version_tuple(wt.PACK_MIN_COMFYUI)
    return wt.version_tuple(min_comfyui(TEMPLATE_WORKFLOWS[file_name][0])[0])


def cost_paragraph(family: str, row_key, counts: str, table, remark: str = "") -> str:
    """The Note's cost: the table's numbers at ``auto`` as the pack runs them (a whole adversarial row
    where the family does not share the prefix, with what sharing would cost, as README's cost table
    says it), or NOT_COUNTED with ``remark`` saying why."""
    if row_key is None or row_key not in table:
        why = remark or f"docs/cost_table.json has no {family} row"
        return f"**Cost per step:** {NOT_COUNTED} ({why})."
    row = table[row_key]
    auto = row["layers"]["auto"]
    what = f"{family}, counted at {row['resolution']}" + (f" on {counts}" if counts else "")
    text = (f"**Cost per step** (docs/cost_table.json, {what}): at `auto` ({auto['resolves_to']}) a step costs "
            f"×{auto['node_ideal_over_cfg']:.2f} a CFG step at cfg > 1 and ×{auto['node_ideal_over_cfg1']:.2f} a "
            f"step at cfg 1, plus {100 * auto['sinkhorn_extra_share']:.1f} % of a row for the Sinkhorn plan itself")
    if row["node_shares_prefix"]:
        text += (" (`1 + after_share/2` and `1 + after_share`: the adversarial row recomputes only the blocks "
                 "from the perturbed one on).")
    else:
        text += (f". The pack does not compute the shared blocks once on {family} yet (no prefix sharing in the "
                 "family record): the adversarial row is a whole row at every layer; sharing them would cost "
                 f"×{auto['ideal_over_cfg']:.2f} and ×{auto['ideal_over_cfg1']:.2f}.")
    return text + (f" {remark}" if remark else "")


def placement(wf) -> str:
    """Where the ASAG nodes are, in words."""
    parts = []
    for scope in wt.scopes(wf):
        links = scope.links()
        for node in scope.nodes:
            if node["type"] != "ASAG":
                continue
            fed = sorted({scope.node(links[i]["target_id"])["type"] for i in node["outputs"][0]["links"]})
            where = "in the graph" if scope.name == "root" else f"inside the subgraph **{scope.name}**"
            mode = " (bypassed, as the stage it feeds)" if node.get("mode", 0) == 4 else ""
            parts.append(f"- {where}, feeding {', '.join(fed)}{mode}")
    return "\n".join(parts)


def opens_small(file_name: str, wf: dict, template: dict) -> str:
    """The Note's paragraph for a workflow in OPENS_SMALL (with its and its template's fit), else ''."""
    if file_name not in OPENS_SMALL:
        return ""
    why = OPENS_SMALL[file_name].format(nodes=len(template["nodes"]))
    return (f"**Opens small:** frontend 1.58.1 fits this workflow at {wt.fit_scale(wf):.2f} in a 1600×1000 window "
            f"(the template at {wt.fit_scale(template):.2f}; below {wt.FIT_TARGET} it draws nodes as boxes): {why}.")


def note_text(file_name: str, wf: dict, table=None, template=None) -> str:
    template_name, family, row_key, counts = TEMPLATE_WORKFLOWS[file_name]
    template = wt.load_template(template_name) if template is None else template
    entry = wt.index_entry(template_name)
    version, why = min_comfyui(template_name)
    table = load_cost_table() if table is None else table
    files = "\n".join(f"- [{name}]({url}) → `models/{folder}/{name}`" for name, folder, url in wt.loader_files(wf))
    subgraphs = [s.name for s in wt.scopes(wf) if s.name != "root"]
    open_hint = (" Open the subgraph (the icon at its top right) to see the ASAG node." if subgraphs else "")
    return "\n\n".join([
        f"## ASAG + {entry['title']}",
        f"ComfyUI's template **{entry['title']}** (`{template_name}`, {wt.TEMPLATES_PACKAGE} {wt.TEMPLATES_VERSION}) "
        "with ASAG inserted on every sampler's model; settings, files, prompts and default modes are the "
        "template's." + open_hint,
        f"**Needs:** ComfyUI ≥ {version} ({why}) and this pack, [comfyui-asag]({PACK_URL}).",
        "**ASAG nodes:**\n" + placement(wf),
        f"**Settings:** scale {wt.ASAG_SCALE} (the paper's best, {PAPER}, measured on SDXL); layers `auto`, the "
        "model's middle block (the pack's default; **ASAG (Advanced)** takes others). Scale 0 turns ASAG off. "
        f"For {family} these are starting points: no quality was measured on it.",
        cost_paragraph(family, row_key, counts, table, COST_REMARKS.get(file_name, "")),
        *[text for text in [opens_small(file_name, wf, template)] if text],
        "**Model files:**\n" + files,
    ])


def note_node(node_id, pos, text) -> dict:
    return {
        "id": node_id, "type": "MarkdownNote", "pos": pos, "size": list(wt.NOTE_SIZE), "flags": {}, "order": 0,
        "mode": 0, "inputs": [], "outputs": [], "title": wt.NOTE_TITLE, "properties": {}, "widgets_values": [text],
    }


def build(file_name: str, template=None) -> dict:
    """workflows/``file_name`` made from its installed template."""
    template_name = TEMPLATE_WORKFLOWS[file_name][0]
    template = wt.load_template(template_name) if template is None else template
    wf = wt.insert_asag(template)
    root = wt.scopes(wf)[0]
    xs = [n["pos"][0] for n in root.nodes]
    ys = [n["pos"][1] for n in root.nodes]
    near = [min(xs) - wt.NOTE_SIZE[0] - 40, min(ys)]
    pos = wt.free_spot(root, near, wt.NOTE_SIZE)
    node_id, link_id = wt._max_ids(wf)
    wf["nodes"].append(note_node(node_id + 1, pos, ""))
    wt._set_max_ids(wf, node_id + 1, link_id)
    wt._renumber_order(wf)
    wt.compact_root(wf, notes_first=(node_id + 1,))
    wf["nodes"][-1]["widgets_values"] = [note_text(file_name, wf, template=template)]  # with the fit it opens at
    wf.setdefault("extra", {})["ds"] = wt.saved_view(wf, wt.SAFE_AREA)
    return wf


def write_all() -> None:
    for file_name in TEMPLATE_WORKFLOWS:
        wf = build(file_name)
        with open(os.path.join(wt.ROOT, "workflows", file_name), "w", encoding="utf-8") as f:
            json.dump(wf, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print(f"workflows/{file_name}")


if __name__ == "__main__":
    write_all()
