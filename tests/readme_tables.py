"""README sections generated from the code: ``python -m tests.readme_tables`` rewrites them in place,
``tests/test_readme_tables.py`` checks generated == committed.

A section lies between ``<!-- generated: NAME (python -m tests.readme_tables) -->`` and
``<!-- end: NAME -->``; NAME is a function of this module that returns the section's text.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
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
        hosts = ", ".join(f.hosts) if f.classes else "—"
        rows.append(f"| {f.name} | {f.models} | {_layers(f)} | {f.auto.reason} | {f.covers} | "
                    f"{'yes' if f.prefix else 'no'} | {hosts} |")
    return "\n".join(rows) + "\n"


SECTIONS = {"families": families}
_SECTION = re.compile(r"(<!-- generated: (\w+) \(python -m tests\.readme_tables\) -->\n)(.*?)(<!-- end: \2 -->)", re.S)


def render(text: str) -> str:
    """``text`` with every generated section made afresh."""
    return _SECTION.sub(lambda m: m.group(1) + SECTIONS[m.group(2)]() + m.group(4), text)


def sections(text: str) -> list:
    return [m.group(2) for m in _SECTION.finditer(text)]


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    print(f"rewrote {', '.join(sections(README.read_text()))} in {README}")
