"""The translations in locales/ cover exactly this pack's nodes, inputs and outputs.

Static: against workflow_checks.OUR_NODES (no ComfyUI needed). Host: OUR_NODES is the real schema
(test_workflows checks that too), locales/en is the schemas' own text, and the category path
segments main.json leaves out are ComfyUI's own, which the frontend translates itself.
"""

from __future__ import annotations

import asyncio

import pytest

from tests import locale_checks as lc
from tests import workflow_checks as wc


@pytest.mark.parametrize("lang", lc.LANGUAGES)
def test_every_input_and_output_is_translated_and_nothing_else(lang):
    errors = lc.check_node_defs(lc.load(lang, "nodeDefs.json"), wc.OUR_NODES)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("lang", lc.LANGUAGES)
def test_main_json_names_our_category(lang):
    assert set(lc.load(lang, "main.json")) == {"nodeCategories"}
    assert set(lc.load(lang, "main.json")["nodeCategories"]) == set(lc.OWN_CATEGORY_SEGMENTS)


def test_the_check_bites():
    """A missing translation, an input that does not exist and a missing output are each reported."""
    defs = lc.load("zh", "nodeDefs.json")
    broken = {k: {**v, "inputs": dict(v["inputs"]), "outputs": dict(v["outputs"])} for k, v in defs.items()}
    del broken["ASAGAdvanced"]["inputs"]["end_percent"]
    broken["ASAGAdvanced"]["inputs"]["sigma_end"] = {"name": "σ", "tooltip": "σ"}
    broken["ASAGGuider"]["outputs"] = {}
    errors = "\n".join(lc.check_node_defs(broken, wc.OUR_NODES))
    for fragment in ("'end_percent' has no translation", "names input 'sigma_end'", "ASAGGuider: outputs"):
        assert fragment in errors, errors


def test_chinese_is_chinese():
    """Every zh display name and tooltip has Chinese text (not a copied English string)."""
    en, zh = lc.load("en", "nodeDefs.json"), lc.load("zh", "nodeDefs.json")
    for node_id, entry in zh.items():
        texts = [entry["display_name"], entry["description"]]
        texts += [i["tooltip"] for i in entry["inputs"].values()] + [o["tooltip"] for o in entry["outputs"].values()]
        for text in texts:
            assert any("\u4e00" <= ch <= "\u9fff" for ch in text), f"{node_id}: {text!r}"
        assert entry["display_name"] != en[node_id]["display_name"]


@pytest.mark.host
def test_english_is_the_schema_and_categories_are_covered(host):
    infos = lc.host_infos(host, wc.OURS)
    expected = lc.node_defs_from_schemas(infos)
    assert lc.load("en", "nodeDefs.json") == expected, (
        "locales/en/nodeDefs.json differs from the node schemas: run python -m tests.locale_checks --write-en "
        "and update locales/zh to match")
    if "SamplerCustomAdvanced" not in host.nodes.NODE_CLASS_MAPPINGS:  # the comfy_extras nodes
        asyncio.run(host.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    core_segments = {segment for cls in host.nodes.NODE_CLASS_MAPPINGS.values()
                     if not getattr(cls, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")
                     for segment in str(getattr(cls, "CATEGORY", "") or "").split("/")}
    ours = {segment for info in infos.values() for segment in info["category"].split("/")}
    assert ours - core_segments == set(lc.OWN_CATEGORY_SEGMENTS), (ours, sorted(ours & core_segments))
