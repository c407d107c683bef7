"""The video workflows (workflows/wan22_*, ltxv_*, hunyuan_video_*): static checks of what each graph
does, against ComfyUI's own templates' settings, and of what its Note says against the layer counts
and the cost table (docs/cost_table.json, ``python -m benchmarks.cost``).

The checks every workflow gets (structure, node definitions, model files, layout, the editor) are in
test_workflows.py and test_e2e_browser.py; these are the per-family ones.
"""

from __future__ import annotations

import json
import re

import pytest

from tests import video_notes
from tests import workflow_checks as wc

# file -> (cost table key, auto layer, block count of the main stack, STG's published layers, cfg 1?)
VIDEO = {
    "wan22_14b_t2v_asag.json": ("wan22_14b", "b20", 40, ("b2", "b9-b10"), False),
    "wan22_14b_t2v_4step_asag.json": ("wan22_14b", "b20", 40, ("b2", "b9-b10"), True),
    "wan22_5b_ti2v_asag.json": ("wan22_5b", "b15", 30, ("b2", "b9-b10"), False),
    "ltxv_t2v_asag.json": ("ltxv", "b14", 28, ("b14", "b19"), False),
    "hunyuan_video_t2v_asag.json": ("hunyuan_video", "double10", 20, ("double2",), True),
}


def test_the_video_set():
    assert set(VIDEO) == set(wc.VIDEO_WORKFLOW_FILES)


@pytest.fixture(scope="module")
def workflows():
    return {name: wc.load(name) for name in wc.VIDEO_WORKFLOW_FILES}


def _note(wf):
    return "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] in wc.NOTE_TYPES)


def _chain(wf, node, input_name="model"):
    return [n["type"] for n in wc.upstream(wf, node, input_name)]


def _one(wf, node_type):
    (node,) = wc.nodes_of(wf, node_type)
    return node


def _saved_video(wf, decoder_type="VAEDecode"):
    """The decoder feeding CreateVideo -> SaveVideo, and CreateVideo's fps."""
    decoder = _one(wf, decoder_type)
    (create, _), = wc.consumers(wf, decoder)
    assert create["type"] == "CreateVideo"
    (save, _), = wc.consumers(wf, create)
    assert save["type"] == "SaveVideo"
    return decoder, wc.widget(create, "fps")


def _widgets(node, *names):
    return tuple(wc.widget(node, n) for n in names)


# ------------------------------------------------------------------------------------- the graphs

@pytest.mark.parametrize("name,lora", [("wan22_14b_t2v_asag.json", False), ("wan22_14b_t2v_4step_asag.json", True)])
def test_wan22_14b_two_experts(name, lora, workflows):
    """ComfyUI's video_wan2_2_14B_t2v: two experts, each UNETLoader [-> LightX2V LoRA] -> ModelSamplingSD3
    -> ASAGAdvanced -> KSamplerAdvanced; the high-noise expert's leftover noise goes on to the low-noise one."""
    wf = workflows[name]
    steps, cfg, shift, split = (4, 1, 5, 2) if lora else (20, 3.5, 8, 10)
    samplers = wc.nodes_of(wf, "KSamplerAdvanced")
    high = next(s for s in samplers if wc.widget(s, "add_noise") == "enable")
    (low, _), = wc.consumers(wf, high)
    assert low in samplers and wc.source(wf, low, "latent_image") == (high, 0)
    assert wc.source(wf, high, "latent_image")[0]["type"] == "EmptyHunyuanLatentVideo"
    assert _widgets(wc.source(wf, high, "latent_image")[0], "width", "height", "length") == (640, 640, 81)
    assert _widgets(high, "steps", "cfg", "sampler_name", "scheduler", "start_at_step", "end_at_step",
                    "return_with_leftover_noise") == (steps, cfg, "euler", "simple", 0, split, "enable")
    assert _widgets(low, "add_noise", "steps", "cfg", "sampler_name", "scheduler", "start_at_step",
                    "return_with_leftover_noise") == ("disable", steps, cfg, "euler", "simple", split, "disable")
    assert wc.widget(low, "end_at_step") >= steps
    for sampler, expert in ((high, "high_noise"), (low, "low_noise")):
        chain = wc.upstream(wf, sampler)
        want = ["ASAGAdvanced", "ModelSamplingSD3"] + (["LoraLoaderModelOnly"] if lora else []) + ["UNETLoader"]
        assert [n["type"] for n in chain] == want, "ASAG patches both experts"
        assert wc.widget(chain[0], "layers") == "auto" and wc.widget(chain[0], "scale") == 1.5
        assert wc.widget(chain[1], "shift") == shift
        assert wc.widget(chain[-1], "unet_name") == f"wan2.2_t2v_{expert}_14B_fp8_scaled.safetensors"
        if lora:
            assert _widgets(chain[2], "lora_name", "strength_model") == (
                f"wan2.2_t2v_lightx2v_4steps_lora_v1.1_{expert}.safetensors", 1)
        for cond in ("positive", "negative"):
            assert wc.source(wf, sampler, cond) == wc.source(wf, high, cond)
    assert _widgets(_one(wf, "CLIPLoader"), "clip_name", "type") == ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan")
    decoder, fps = _saved_video(wf)
    assert fps == 16 and wc.source(wf, decoder, "samples") == (low, 0)
    assert wc.widget(wc.source(wf, decoder, "vae")[0], "vae_name") == "wan_2.1_vae.safetensors"


def test_wan22_5b_text_and_image_to_video(workflows):
    """ComfyUI's video_wan2_2_5B_ti2v: Wan22ImageToVideoLatent with the 5B model's own VAE, a start image."""
    wf = workflows["wan22_5b_ti2v_asag.json"]
    ks = _one(wf, "KSampler")
    assert _chain(wf, ks) == ["ASAGAdvanced", "ModelSamplingSD3", "UNETLoader"]
    assert wc.widget(wc.upstream(wf, ks)[1], "shift") == 8
    assert wc.widget(wc.upstream(wf, ks)[-1], "unet_name") == "wan2.2_ti2v_5B_fp16.safetensors"
    assert _widgets(ks, "steps", "cfg", "sampler_name", "scheduler") == (20, 5, "uni_pc", "simple")
    latent = wc.source(wf, ks, "latent_image")[0]
    assert latent["type"] == "Wan22ImageToVideoLatent"
    assert _widgets(latent, "width", "height", "length") == (1280, 704, 121)
    assert wc.source(wf, latent, "start_image")[0]["type"] == "LoadImage"
    decoder, fps = _saved_video(wf)
    assert fps == 24
    vae = wc.source(wf, latent, "vae")[0]
    assert wc.source(wf, decoder, "vae")[0] is vae and wc.widget(vae, "vae_name") == "wan2.2_vae.safetensors"
    assert "start_image" in _note(wf) and "text-to-video" in _note(wf)


def test_ltxv_text_to_video(workflows):
    """ComfyUI's ltxv_text_to_video: LTXVConditioning, LTXVScheduler on the latent, SamplerCustom at cfg 3."""
    wf = workflows["ltxv_t2v_asag.json"]
    sc = _one(wf, "SamplerCustom")
    assert _chain(wf, sc) == ["ASAGAdvanced", "CheckpointLoaderSimple"]
    ckpt = wc.upstream(wf, sc)[-1]
    assert wc.widget(ckpt, "ckpt_name") == "ltx-video-2b-v0.9.safetensors"
    cond = _one(wf, "LTXVConditioning")
    assert wc.source(wf, sc, "positive") == (cond, 0) and wc.source(wf, sc, "negative") == (cond, 1)
    assert wc.widget(cond, "frame_rate") == 25 and wc.widget(sc, "cfg") == 3
    sched = wc.source(wf, sc, "sigmas")[0]
    assert sched["type"] == "LTXVScheduler"
    assert _widgets(sched, "steps", "max_shift", "base_shift", "stretch", "terminal") == (30, 2.05, 0.95, True, 0.1)
    latent = wc.source(wf, sc, "latent_image")[0]
    assert latent["type"] == "EmptyLTXVLatentVideo" and wc.source(wf, sched, "latent")[0] is latent
    assert _widgets(latent, "width", "height", "length") == (768, 512, 97)
    assert _widgets(_one(wf, "CLIPLoader"), "clip_name", "type") == ("t5xxl_fp16.safetensors", "ltxv")
    decoder, fps = _saved_video(wf)
    assert wc.source(wf, decoder, "vae") == (ckpt, 2) and fps == 24


def test_hunyuan_video_text_to_video(workflows):
    """ComfyUI's hunyuan_video_text_to_video: BasicGuider (cfg 1) with FluxGuidance 6, shift 7, tiled decode."""
    wf = workflows["hunyuan_video_t2v_asag.json"]
    sca = _one(wf, "SamplerCustomAdvanced")
    guider = wc.source(wf, sca, "guider")[0]
    assert guider["type"] == "BasicGuider"
    assert _chain(wf, guider) == ["ASAGAdvanced", "ModelSamplingSD3", "UNETLoader"]
    chain = wc.upstream(wf, guider)
    assert wc.widget(chain[1], "shift") == 7
    assert wc.widget(chain[-1], "unet_name") == "hunyuan_video_t2v_720p_bf16.safetensors"
    guidance = wc.source(wf, guider, "conditioning")[0]
    assert guidance["type"] == "FluxGuidance" and wc.widget(guidance, "guidance") == 6
    clip = _one(wf, "DualCLIPLoader")
    assert _widgets(clip, "clip_name1", "clip_name2", "type") == (
        "clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors", "hunyuan_video")
    sched = wc.source(wf, sca, "sigmas")[0]
    assert _widgets(sched, "scheduler", "steps", "denoise") == ("simple", 20, 1)
    assert wc.source(wf, sched, "model")[0] is chain[1], "the schedule of the shifted model"
    assert _widgets(wc.source(wf, sca, "latent_image")[0], "width", "height", "length") == (848, 480, 73)
    decoder, fps = _saved_video(wf, "VAEDecodeTiled")
    assert fps == 24 and wc.source(wf, decoder, "samples") == (sca, 0)
    assert wc.widget(wc.source(wf, decoder, "vae")[0], "vae_name") == "hunyuan_video_vae_bf16.safetensors"


# ------------------------------------------------------------------------------------- the Notes

@pytest.mark.parametrize("name", sorted(VIDEO))
def test_note_gives_layers_and_their_sources(name, workflows):
    _, auto, blocks, stg, _ = VIDEO[name]
    text = _note(workflows[name])
    assert "'auto' = the middle" in text and auto in text and f"{blocks} " in text, "the auto layer and why"
    assert "STG" in text and all(layer in text for layer in stg), "STG's published layers as alternatives"
    assert "ComfyUI's" in text and "template" in text, "where the settings come from"
    assert "no video quality was measured" in text


@pytest.mark.parametrize("name", sorted(VIDEO))
def test_note_states_the_cost(name, workflows):
    """The Note's cost paragraph is the cost table's numbers for the layers it names (tests/video_notes.py;
    the formula alone before the table exists), and at cfg 1 the Note says the adversarial row is then a
    whole extra row."""
    key, auto, _, stg, cfg1 = VIDEO[name]
    text = _note(workflows[name])
    paragraphs = text.split("\n\n")
    assert video_notes.expected_paragraph(name) in paragraphs, "python -m tests.video_notes rewrites it"
    table_key, specs, table_cfg1, two_experts = video_notes.NOTE_COSTS[name]
    assert (table_key, table_cfg1, two_experts) == (key, cfg1, name.startswith("wan22_14b"))
    named = {label.split(" ")[0] for _, label in specs}
    assert named == {"auto", *stg} - {auto}, "the cost of auto and of each STG layer the Note offers"
    if cfg1:
        assert "no uncond row" in text and "whole extra row" in text and "1 + after_share" in text
    table = video_notes.load_table()
    if table is not None:
        assert "ideal, from the cost table" in text
        _, index = re.fullmatch(r"(b|double)(\d+)", auto).groups()
        assert table[key]["layers"]["auto"]["resolves_to"] in (auto, f"('double_block', {index})"), (
            "the Note's auto layer is what the node picks", table[key]["layers"]["auto"]["resolves_to"])


def test_cost_paragraph_follows_the_table():
    """The paragraph carries the table's numbers: a changed table changes it; no table, the formula."""
    table = video_notes.load_table()
    if table is None:
        pytest.skip("docs/cost_table.json is not written yet")
    changed = json.loads(json.dumps(table))
    changed["wan22_14b"]["layers"]["auto"]["ideal_over_cfg"] = 1.3141
    old = video_notes.expected_paragraph("wan22_14b_t2v_asag.json", table)
    new = video_notes.expected_paragraph("wan22_14b_t2v_asag.json", changed)
    assert new != old and "auto (b20): ideal x1.31," in new and "auto (b20): ideal x1.16," in new
    assert "1 + after_share/2 at best" in video_notes.expected_paragraph("wan22_14b_t2v_asag.json", {})


@pytest.mark.parametrize("name", ["wan22_14b_t2v_asag.json", "wan22_14b_t2v_4step_asag.json"])
def test_wan_note_explains_guiding_one_expert(name, workflows):
    text = _note(workflows[name])
    assert "only the high-noise expert" in text and "saves the adversarial row" in text
    assert "without ASAG" in text, "what it changes"
