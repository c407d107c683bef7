"""The workflow tables, generated from the workflows: README's "Workflows" table and docs/workflows.md's
model files (``tests/readme_tables.py`` puts them there; ``python -m tests.workflow_readme`` prints them).
"""

from __future__ import annotations

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import workflow_checks as wc  # noqa: E402
from tests import workflow_notes as wn  # noqa: E402
from tests import workflow_templates as wt  # noqa: E402

# this pack's own SD1.5 workflows: (what it shows, why SD1.5; each Note says the same)
OWN_ROWS = {
    "sd15_asag.json": ("Load Checkpoint → ASAG → KSampler beside a CFG-only KSampler on the same seed (the A/B)",
                       "the CPU-sized demo the browser test runs"),
    "ablation_asag.json": ("an ASAGAdvanced grid on one seed, one subgraph per branch above its image: adversarial "
                           "with 1 / 2 / 5 iterations, similarity, uniform, and CFG only",
                           "the paper's ablations, cheap enough to run as a grid"),
    "controlnet_asag.json": ("Canny ControlNet (core nodes) + ASAG",
                             ("a Canny ControlNet of core nodes at CPU size (the SD1.5 ControlNet template left the "
                              "index; the Flux, SD3.5 and Qwen-Image ControlNet templates need far larger models)")),
    "ipadapter_asag.json": (f"IP-Adapter + ASAG; needs [{wc.THIRD_PARTY_PACK}](https://github.com/{wc.THIRD_PARTY_REPO})",
                            "a third-party pack's nodes beside ASAG"),
}


def _short(name):
    return name[:-len("_asag.json")]


def asag_summary(wf) -> str:
    """'2 × ASAG → KSamplerAdvanced (in subgraph)' style: how many ASAG nodes and what they feed."""
    fed, inside, bypassed = [], False, 0
    for scope in wt.scopes(wf):
        links = scope.links()
        for node in scope.nodes:
            if node["type"] == "ASAG":
                inside |= scope.name != "root"
                bypassed += node.get("mode", 0) == 4
                fed += [scope.node(links[i]["target_id"])["type"] for i in node["outputs"][0]["links"]]
    count = sum(1 for n in wt.all_nodes(wf) if n["type"] == "ASAG")
    text = f"{count} × ASAG → {', '.join(sorted(set(fed)))}"
    if bypassed:
        text += f" ({bypassed} bypassed with their stage)"
    return text + (", inside the subgraph" if inside else "")


def cost_cell(row_key, table, counts="") -> str:
    """The Note's cost in short: the pack's own numbers at ``auto`` (a whole adversarial row where the
    family shares no prefix yet), whose row they are when it is another model's, or NOT_COUNTED."""
    if row_key is None or row_key not in table:
        return wn.NOT_COUNTED
    row = table[row_key]
    auto = row["layers"]["auto"]
    text = f"×{auto['node_ideal_over_cfg']:.2f} CFG / ×{auto['node_ideal_over_cfg1']:.2f} cfg 1"
    if not row["node_shares_prefix"]:
        text += " (a whole row: no prefix sharing yet)"
    if counts:  # counted on another model: its name, as the Note begins to say it
        text += f" (on {counts.split(',')[0]})"
    return text


def workflow_table() -> str:
    table = wn.load_cost_table()
    lines = ["| workflow | template followed | family | min ComfyUI | what ASAG adds | cost per step (`auto`) |",
             "|---|---|---|---|---|---|"]
    for name in wc.TEMPLATE_WORKFLOW_FILES:
        template_name, family, row_key, counts = wn.TEMPLATE_WORKFLOWS[name]
        version, _ = wn.min_comfyui(template_name)
        lines.append(f"| `{name}` | `{template_name}` ({wt.TEMPLATES_VERSION}) | {family} | {version} | "
                     f"{asag_summary(wc.load(name))} | {cost_cell(row_key, table, counts)} |")
    for name, (shows, why) in OWN_ROWS.items():
        lines.append(f"| `{name}` | none: {why} | SD1.5 | {wt.PACK_MIN_COMFYUI} | {shows} | "
                     f"{cost_cell('sd15', table)} |")
    return "\n".join(lines)


def files_of(name) -> list[tuple[str, str]]:
    """(file, folder) of the model files a workflow loads."""
    wf = wc.load(name)
    if name in wn.TEMPLATE_WORKFLOWS:
        return [(f, d) for f, d, _ in wt.loader_files(wf)]
    # this pack's own workflows: every official file they name, in a loader, a download link or the
    # Note (IP-Adapter's models are picked by its loader's preset, so only the Note names them)
    text = json.dumps(wf)
    return [(name, folder) for name, folder in wc.MODEL_FILES.items()
            if re.search(r"(?<![\w.\-])" + re.escape(name), text)]


def model_table() -> str:
    used = {}
    for name in wc.WORKFLOW_FILES:
        for file_name, folder in files_of(name):
            used.setdefault((file_name, folder), []).append(_short(name))
    lines = ["| file | folder | used by |", "|---|---|---|"]
    for (file_name, folder), names in sorted(used.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| `{file_name}` | `{folder}` | {', '.join(names)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(workflow_table())
    print()
    print(model_table())
