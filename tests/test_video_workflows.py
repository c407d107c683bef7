"""The video workflows made from ComfyUI's official templates: what each keeps of its template.

test_workflows.py checks every template workflow against its installed template (settings, files,
prompts, modes); these name the video templates' own points: Wan 2.2 14B's two experts at shift 5 with
the Lightning switch before ASAG, Wan's original (Chinese) negative prompt, Wan 2.2 5B text-to-video by
default (its LoadImage bypassed), LTX-2.3's two stages and HunyuanVideo 1.5's base and super-resolution
stages each guided.
"""

from __future__ import annotations

import pytest

from tests import workflow_checks as wc
from tests import workflow_templates as wt

VIDEO = ("wan22_14b_t2v_asag.json", "wan22_14b_i2v_asag.json", "wan22_5b_ti2v_asag.json", "ltx23_i2v_asag.json",
         "hunyuan_video15_t2v_asag.json")


@pytest.fixture(scope="module")
def workflows():
    return {name: wc.load(name) for name in VIDEO}


def _in_scope(wf, node_type):
    """(scope, node) for every node of ``node_type``, subgraphs included."""
    return [(scope, n) for scope in wt.scopes(wf) for n in scope.nodes if n["type"] == node_type]


def _source(scope, node, input_name):
    inp = next(i for i in node["inputs"] if i["name"] == input_name)
    link = scope.links()[inp["link"]]
    return scope.node(link["origin_id"]) if link["origin_id"] != wt.SUBGRAPH_INPUT else None


def _chinese(text):
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_the_video_set():
    assert set(VIDEO) <= set(wc.TEMPLATE_WORKFLOW_FILES)


@pytest.mark.parametrize("name", ["wan22_14b_t2v_asag.json", "wan22_14b_i2v_asag.json"])
def test_wan22_14b_both_experts_after_the_lightning_switch(name, workflows):
    """Each KSamplerAdvanced (high- and low-noise expert) takes ASAG, which takes ModelSamplingSD3 at
    shift 5 (the template's, in both modes), which takes the Lightning LoRA switch."""
    wf = workflows[name]
    samplers = _in_scope(wf, "KSamplerAdvanced")
    assert len(samplers) == 2
    experts = set()
    for scope, sampler in samplers:
        asag = _source(scope, sampler, "model")
        assert asag["type"] == "ASAG" and asag["widgets_values"] == [1.5]
        shift = _source(scope, asag, "model")
        assert shift["type"] == "ModelSamplingSD3"
        assert shift["widgets_values"][0] == pytest.approx(5)  # saved as 5.000000000000001
        switch = _source(scope, shift, "model")
        assert switch["type"] == "ComfySwitchNode", "ASAG sits after the Lightning switch"
        experts.add(asag["id"])
    assert len(experts) == 2, "one ASAG node per expert"


@pytest.mark.parametrize("name", ["wan22_14b_t2v_asag.json", "wan22_14b_i2v_asag.json", "wan22_5b_ti2v_asag.json"])
def test_wan_keeps_its_chinese_negative_prompt(name, workflows):
    texts = [n["widgets_values"][0] for n in wt.all_nodes(workflows[name])
             if n["type"] == "CLIPTextEncode" and isinstance(n.get("widgets_values", [None])[0], str)]
    assert any(_chinese(t) for t in texts), "Wan's original negative prompt is Chinese"


def test_wan22_5b_is_text_to_video_by_default(workflows):
    """The template bypasses LoadImage (mode 4): text-to-video until the user enables it."""
    wf = workflows["wan22_5b_ti2v_asag.json"]
    (_, load_image), = _in_scope(wf, "LoadImage")
    assert load_image["mode"] == 4
    (scope, sampler), = _in_scope(wf, "KSampler")
    assert _source(scope, sampler, "model")["type"] == "ASAG"


def test_ltx23_guides_both_stages(workflows):
    """LTX-2.3's two CFGGuiders (base and upscaled stage) both take the ASAG-patched model."""
    guiders = _in_scope(workflows["ltx23_i2v_asag.json"], "CFGGuider")
    assert len(guiders) == 2
    assert {_source(scope, g, "model")["type"] for scope, g in guiders} == {"ASAG"}


def test_hunyuan_video15_guides_both_stages(workflows):
    """HunyuanVideo 1.5: the base stage's guider and the super-resolution stage's two guiders (bypassed
    in the template, so their ASAG nodes are bypassed too) each take an ASAG node."""
    guiders = _in_scope(workflows["hunyuan_video15_t2v_asag.json"], "CFGGuider")
    assert len(guiders) == 3
    for scope, guider in guiders:
        asag = _source(scope, guider, "model")
        assert asag["type"] == "ASAG" and asag["mode"] == guider["mode"]
    assert sorted(g["mode"] for _, g in guiders) == [0, 4, 4]
