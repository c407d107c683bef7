"""The cost paragraph of each video workflow's Note, written from the cost table.

docs/cost_table.json (``python -m benchmarks.cost``) counts one row of each full-size architecture;
per layer it gives the ideal step cost against CFG (``ideal_over_cfg`` = 1 + after_share/2, or
``ideal_over_cfg1`` = 1 + after_share at cfg 1, after_share being the share of a row's work from the
perturbed block on) and what the node costs today (``node_ideal_over_cfg`` / ``node_ideal_over_cfg1``:
the whole adversarial row where the node does not share the blocks before the perturbed one). The
Note's paragraph beginning ``Cost per step`` is :func:`cost_paragraph` of the table, which
test_video_workflows checks; after the table changes, rewrite the paragraphs with::

    python -m tests.video_notes
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import workflow_checks as wc  # noqa: E402

COST_TABLE = os.path.join(ROOT, "docs", "cost_table.json")
PARAGRAPH_START = "Cost per step"

# file -> (cost table key, [(layer spec in the table, how the Note names it)], cfg 1?, two experts?)
NOTE_COSTS = {
    "wan22_14b_t2v_asag.json": (
        "wan22_14b", [("auto", "auto (b20)"), ("b2", "b2"), ("b9", "b9-b10 (from b9 on)")], False, True),
    "wan22_14b_t2v_4step_asag.json": (
        "wan22_14b", [("auto", "auto (b20)"), ("b2", "b2"), ("b9", "b9-b10 (from b9 on)")], True, True),
    "wan22_5b_ti2v_asag.json": (
        "wan22_5b", [("auto", "auto (b15)"), ("b2", "b2"), ("b9", "b9-b10 (from b9 on)")], False, False),
    "ltxv_t2v_asag.json": ("ltxv", [("auto", "auto (b14)"), ("b19", "b19")], False, False),
    "hunyuan_video_t2v_asag.json": ("hunyuan_video", [("auto", "auto (double10)"), ("double2", "double2")], True,
                                    False),
}


def load_table():
    """The cost table's models, or None before it is written."""
    if not os.path.isfile(COST_TABLE):
        return None
    with open(COST_TABLE, encoding="utf-8") as f:
        return json.load(f)["models"]


def cost_paragraph(table, key, specs, cfg1, two_experts) -> str:
    """The Note's cost paragraph for model ``key`` of ``table`` (the formula alone when there is none)."""
    against = "a cfg-1 step (one row)" if cfg1 else "a CFG step (cond + uncond rows)"
    formula = "1 + after_share" if cfg1 else "1 + after_share/2"
    if table is None or key not in table:
        return (f"{PARAGRAPH_START} against {against}: {formula} at best, after_share being the share of a "
                "row's work from the perturbed block on; the cost table (docs/cost_table.json) was not yet "
                "written when this workflow was made.")
    model = table[key]
    suffix = "1" if cfg1 else ""
    lines = [f"{PARAGRAPH_START} against {against}, ideal, from the cost table (docs/cost_table.json, "
             f"{model['resolution']}), and what the node costs today:"]
    for spec, label in specs:
        e = model["layers"][spec]
        ideal, today = e["ideal_over_cfg" + suffix], e["node_ideal_over_cfg" + suffix]
        lines.append(f"  {label}: ideal x{ideal:.2f}, today x{today:.2f}")
    lines.append(f"ideal = {formula}, after_share = the share of a row's work from the perturbed block on (the "
                 "blocks before it are the same in the conditional and the adversarial row, so they need "
                 "computing only once).")
    extra = max(model["layers"][spec]["sinkhorn_extra_share"] for spec, _ in specs)
    lines.append(f"On top, the Sinkhorn plan itself (5 attention-like passes where softmax attention makes 1) adds "
                 f"{100 * extra / (1 if cfg1 else 2):.1f} % of a {'cfg-1' if cfg1 else 'CFG'} step per perturbed "
                 "block.")
    if all(model["layers"][spec]["node_shares_prefix"] for spec, _ in specs):
        lines.append("The node computes those blocks once today, for each layer above.")
    elif not any(model["layers"][spec]["node_shares_prefix"] for spec, _ in specs):
        lines.append("Today the node runs the whole adversarial row on this model: one more model row per step.")
    if two_experts:
        lines.append("Guiding only the high-noise expert (half the steps), over the whole run:")
        for spec, label in specs:
            e = model["layers"][spec]
            lines.append(f"  {label}: ideal x{(1 + e['ideal_over_cfg' + suffix]) / 2:.2f}, "
                         f"today x{(1 + e['node_ideal_over_cfg' + suffix]) / 2:.2f}")
    return "\n".join(lines)


def expected_paragraph(file_name, table=None) -> str:
    key, specs, cfg1, two_experts = NOTE_COSTS[file_name]
    return cost_paragraph(load_table() if table is None else table, key, specs, cfg1, two_experts)


def note_of(wf) -> dict:
    (note,) = [n for n in wf["nodes"] if n["type"] in wc.NOTE_TYPES]
    return note


def with_paragraph(text: str, paragraph: str) -> str:
    """``text`` with its ``Cost per step`` paragraph replaced by ``paragraph``."""
    paragraphs = text.split("\n\n")
    (index,) = [i for i, p in enumerate(paragraphs) if p.startswith(PARAGRAPH_START)]
    paragraphs[index] = paragraph
    return "\n\n".join(paragraphs)


def main() -> int:
    table = load_table()
    for name in NOTE_COSTS:
        path = os.path.join(wc.WORKFLOWS_DIR, name)
        wf = wc.load(name)
        note = note_of(wf)
        text = with_paragraph(note["widgets_values"][0], expected_paragraph(name, table))
        if text != note["widgets_values"][0]:
            note["widgets_values"][0] = text
            with open(path, "w", encoding="utf-8") as f:
                json.dump(wf, f, indent=2, ensure_ascii=False)
                f.write("\n")
            print(f"rewrote the cost paragraph of {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
