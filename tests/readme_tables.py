"""Doc sections generated from the code: ``python -m tests.readme_tables`` rewrites them in place in
README.md and docs/workflows.md, ``tests/test_readme_tables.py`` checks generated == committed.

A section lies between ``<!-- generated: NAME (python -m tests.readme_tables) -->`` and
``<!-- end: NAME -->``; NAME is a function of this module that returns the section's text.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = (README, ROOT / "docs" / "workflows.md")
sys.path.insert(0, str(ROOT / "tests"))

from pack_modules import pure  # noqa: E402


def _layers(family) -> str:
    if family.unet:
        return "`d<i>`, `m<i>`, `u<i>`"
    if len(family.stacks) == 1:
        return "`b<i>`"
    return ", ".join(f"`{stack.grammar}<i>`" for stack in family.stacks)


def families() -> str:
    """The families table: one row per record of nodes/families.py."""
    records = pure("nodes.families")
    rows = ["| family | ComfyUI models | layers | `auto` | what the plan covers | prefix once | tested on |",
            "|---|---|---|---|---|---|---|"]
    for f in (*records.FAMILIES, records.GENERIC):
        hosts = (", ".join(f.hosts) or "emulated (0.38-era files)") if f.classes else "—"
        rows.append(f"| {f.name} | {f.models} | {_layers(f)} | {f.auto.reason} | {f.covers} | "
                    f"{'yes' if f.prefix else 'no'} | {hosts} |")
    return "\n".join(rows) + "\n"


COST_TABLE = ROOT / "docs" / "cost_table.json"


def _px(text: str) -> str:
    """1024x1024 -> 1024×1024 (the README's sign between sizes)."""
    return re.sub(r"(?<=\d)x(?=\d)", "×", text)


def _times(e, shared: bool) -> tuple:
    """(× CFG, × cfg 1) of a layer: the ideals where the pack computes the shared blocks once (its own
    cost differs by the input embedders, < 0.001); where it runs the whole adversarial row, that cost
    with the ideals in parentheses."""
    ideal = f"{e['ideal_over_cfg']:.2f}", f"{e['ideal_over_cfg1']:.2f}"
    if shared:
        return ideal
    return f"{e['node_ideal_over_cfg']:.2f} ({ideal[0]})", f"{e['node_ideal_over_cfg1']:.2f} ({ideal[1]})"


def cost() -> str:
    """The cost table: one row per model of docs/cost_table.json (``python -m benchmarks.cost``)."""
    table = json.loads(COST_TABLE.read_text())
    rows = ["| model, counted at | `auto` | × CFG | × cfg 1 | + Sinkhorn | other layers: × CFG / × cfg 1 |",
            "|---|---|---:|---:|---:|---|"]
    unshared, hosts = [], {}
    for m in table["models"].values():
        shared = m["node_shares_prefix"]
        unshared += [] if shared else [m["name"]]
        hosts.setdefault(m["counted_on"], []).append(m["name"])
        auto = m["layers"]["auto"]
        cfg, cfg1 = _times(auto, shared)
        others = " · ".join(f"`{spec}` {' / '.join(_times(e, shared))}" for spec, e in m["layers"].items()
                            if spec != "auto" and "= auto" not in e["roles"])
        mark = " †" if not shared else ""
        rows.append(f"| {m['name']}, {_px(m['resolution'])}{mark} | `{auto['resolves_to']}` | {cfg} | {cfg1} | "
                    f"{100 * auto['sinkhorn_extra_share']:.1f} % | {others} |")
    text = "\n".join(rows) + "\n"
    if unshared:
        text += (f"\n† The pack does not compute the shared blocks once on {'; '.join(unshared)} yet (no prefix "
                 "sharing in the family record): the adversarial row is a whole row at every layer, ×1.50 CFG "
                 "and ×2.00 at cfg 1; in parentheses what sharing them would cost.\n")
    runs = ", ".join(f"{names[0]} to {names[-1]} on ComfyUI {version}" for version, names in hosts.items())
    text += (f"\nCounted by `python -m benchmarks.cost` under each ComfyUI (`COMFYUI_PATH`), from its own model "
             f"classes: {runs} (docs/cost_table.json records each row's).\n")
    return text


WORKFLOWS_INTRO = """\
`workflows/` holds ready graphs; ComfyUI lists them under **Templates → Extensions → comfyui-asag**, or
drag a JSON file onto the canvas. Each workflow made from a template is ComfyUI's own template
(comfyui-workflow-templates 0.11.97) with ASAG inserted where it guides every sampler the template runs
(both Wan experts, both stages of LTX-2.3 and HunyuanVideo 1.5), and nothing else changed: settings, files,
prompts and default modes are the template's (the tests compare each with the template installed from the
registry). A MarkdownNote in each names the template, the minimum ComfyUI, the ASAG settings and the cost,
with links to every model file; the files and their folders are listed in
[docs/workflows.md](docs/workflows.md). The four SD1.5 workflows follow no template: each Note says why.

""" + ("![wan22_14b_t2v_asag.json as it opens from the template browser of frontend 1.58.1]"
       "(docs/screenshot_wan22_14b_t2v_asag.png)\n\n")


def workflows() -> str:
    """README's workflow table (tests/workflow_readme.py reads every workflow)."""
    import workflow_readme

    return WORKFLOWS_INTRO + workflow_readme.workflow_table() + "\n"


def workflow_models() -> str:
    """docs/workflows.md's model-file table."""
    import workflow_readme

    return workflow_readme.model_table() + "\n"


SECTIONS = {"families": families, "cost": cost, "workflows": workflows, "workflow_models": workflow_models}
_SECTION = re.compile(r"(<!-- generated: (\w+) \(python -m tests\.readme_tables\) -->\n)(.*?)(<!-- end: \2 -->)", re.S)


def render(text: str) -> str:
    """``text`` with every generated section made afresh."""
    return _SECTION.sub(lambda m: m.group(1) + SECTIONS[m.group(2)]() + m.group(4), text)


def sections(text: str) -> list:
    return [m.group(2) for m in _SECTION.finditer(text)]


if __name__ == "__main__":
    for document in DOCUMENTS:
        document.write_text(render(document.read_text()))
        print(f"rewrote {', '.join(sections(document.read_text()))} in {document.relative_to(ROOT)}")
