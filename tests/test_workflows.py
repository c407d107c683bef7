"""Static checks of the shipped workflows (workflows/*.json); no browser, always run.

With a ComfyUI found (tests/comfy_host.py) every node is checked against the real node definitions;
without one, node types against a built-in list and this pack's nodes against OUR_NODES.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re

import pytest

from tests import workflow_checks as wc
from tests.comfy_host import start_host


@functools.lru_cache(maxsize=1)
def _host_specs():
    """(host, {type: Spec}) with ComfyUI's core nodes and this pack loaded, or (None, None)."""
    host = start_host()
    if host is None:
        return None, None
    asyncio.run(host.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return host, wc.host_specs(host)


@pytest.fixture(scope="module")
def specs():
    """{type: Spec}: the host's definitions where known, the built-in tables for the rest."""
    _, host = _host_specs()
    table = wc.table_specs()
    if host is None:
        return table
    merged = dict(table)
    merged.update(host)  # the real definitions win (ours included)
    return merged


@pytest.fixture(scope="module")
def core_types():
    _, host = _host_specs()
    if host is None:
        return set(wc.EXPECTED_CORE)
    return set(host) - set(wc.OURS)


def _load_all():
    return {name: wc.load(name) for name in wc.WORKFLOW_FILES}


@pytest.fixture(scope="module")
def workflows():
    return _load_all()


def _fail(errors):
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


# ------------------------------------------------------------------------------------- every workflow

def test_the_shipped_set():
    assert wc.shipped_files() == sorted(wc.WORKFLOW_FILES), "workflows/ holds exactly the documented workflows"


def test_every_workflow_has_its_thumbnail():
    """ComfyUI's template browser shows <name>.jpg beside <name>.json: one for each, nothing else."""
    jpgs = sorted(f for f in wc.os.listdir(wc.WORKFLOWS_DIR) if f.endswith(".jpg"))
    assert jpgs == sorted(wc.thumbnail_name(n) for n in wc.WORKFLOW_FILES)


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_thumbnail_is_a_small_jpeg(name):
    _fail(wc.check_thumbnail(name))


def test_jpeg_reader_agrees_with_pillow():
    """wc.jpeg_size (no Pillow needed in the static tests) against Pillow, and a PNG is refused."""
    image_module = pytest.importorskip("PIL.Image")
    for name in wc.WORKFLOW_FILES:
        path = wc.os.path.join(wc.WORKFLOWS_DIR, wc.thumbnail_name(name))
        with open(path, "rb") as f:
            data = f.read()
        with image_module.open(path) as image:
            assert image.format == "JPEG" and wc.jpeg_size(data) == image.size, name
    with pytest.raises(ValueError, match="no JPEG"):
        wc.jpeg_size(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError):
        wc.jpeg_size(data[: len(data) // 2])  # cut short: no end marker


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_structure_and_links(name, workflows):
    wf = workflows[name]
    _fail(wc.check_structure(wf) + wc.check_links(wf))


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_node_types_are_core_ours_or_the_named_pack(name, workflows, core_types):
    wf = workflows[name]
    allowed = core_types | set(wc.OURS) | set(wc.FRONTEND_ONLY)
    if name == wc.THIRD_PARTY_FILE:
        allowed |= set(wc.THIRD_PARTY_NODES)
    unknown = sorted({n["type"] for n in wf["nodes"]} - allowed)
    assert not unknown, f"{name}: node types that are not core, ours or {wc.THIRD_PARTY_PACK}'s: {unknown}"
    assert {n["type"] for n in wf["nodes"]} & set(wc.OURS), f"{name} uses none of this pack's nodes"


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_nodes_match_their_definitions(name, workflows, specs):
    """Sockets, outputs, required connections and widget values (count, type, range, choices)."""
    wf = workflows[name]
    errors = []
    for node in wf["nodes"]:
        if node["type"] in wc.FRONTEND_ONLY:
            values = node.get("widgets_values", [])
            if len(values) != len(wc.FRONTEND_ONLY[node["type"]]) or not all(isinstance(v, str) for v in values):
                errors.append(f"node {node['id']} ({node['type']}): widgets_values {values!r}")
            continue
        spec = specs.get(node["type"])
        if spec is None:
            continue  # a core type without a host: only its name was checked
        errors += wc.check_node_against_spec(node, spec)
    _fail(errors)


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_model_files_are_official(name, workflows):
    _fail(wc.check_models(workflows[name]))


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_layout_is_tidy(name, workflows):
    _fail(wc.check_layout(workflows[name]))


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_note_explains_the_workflow(name, workflows):
    wf = workflows[name]
    notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] in wc.NOTE_TYPES]
    assert notes, f"{name} has no Note"
    text = "\n".join(notes)
    assert "ASAG" in text and "models/" in text, f"{name}: the Note must say what it shows and where models go"
    loader_files = {v for n in wf["nodes"] if n["type"] not in wc.NOTE_TYPES
                    for v in n.get("widgets_values", []) if isinstance(v, str) and v in wc.MODEL_FILES}
    for file_name in loader_files:
        assert f"models/{wc.MODEL_FILES[file_name]}/{file_name}" in text, f"{name}: the Note does not place {file_name}"


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_every_sampler_is_saved_and_asag_is_used(name, workflows):
    wf = workflows[name]
    samplers = [n for n in wf["nodes"] if n["type"] in wc.SAMPLERS]
    assert samplers
    for sampler in samplers:
        assert wc.reaches_save(wf, sampler), f"{name}: sampler {sampler['id']} is not decoded and saved"
    for node in wf["nodes"]:
        if node["type"] in wc.OURS:
            assert node["outputs"][0].get("links"), f"{name}: {node['type']} {node['id']} output is unused"
    prefixes = [wc.widget(n, "filename_prefix") for n in wf["nodes"] if n["type"] in wc.SAVERS]
    assert len(prefixes) == len(set(prefixes)), f"{name}: save prefixes repeat: {prefixes}"
    noisy = [s for s in samplers if wc.adds_noise(s)]
    assert noisy, f"{name}: no sampler draws the starting noise"
    if len(noisy) > 1:
        seeds = {wc.seed_of(wf, s) for s in noisy}
        assert len(seeds) == 1, f"{name}: the samplers do not share one seed: {seeds}"


# ------------------------------------------------------------------------------------- per workflow

def _asag_sampler(wf, file_name):
    """The KSampler whose model comes through ASAG, and the plain ones."""
    guided, plain = [], []
    for ks in wc.nodes_of(wf, "KSampler"):
        chain = [n["type"] for n in wc.upstream(wf, ks)]
        (guided if set(chain) & {"ASAG", "ASAGAdvanced"} else plain).append((ks, chain))
        assert chain and chain[-1] in ("CheckpointLoaderSimple", "UNETLoader"), f"{file_name}: {chain}"
    return guided, plain


@pytest.mark.parametrize("name,ckpt,size", [
    ("sd15_asag.json", "v1-5-pruned-emaonly-fp16.safetensors", 512),
    ("sdxl_asag.json", "sd_xl_base_1.0.safetensors", 1024),
])
def test_ab_workflows(name, ckpt, size, workflows):
    wf = workflows[name]
    (loader,) = wc.nodes_of(wf, "CheckpointLoaderSimple")
    assert wc.widget(loader, "ckpt_name") == ckpt
    (latent,) = wc.nodes_of(wf, "EmptyLatentImage")
    assert (wc.widget(latent, "width"), wc.widget(latent, "height")) == (size, size)
    guided, plain = _asag_sampler(wf, name)
    assert len(guided) == 1 and len(plain) == 1, "one CFG + ASAG sampler beside one CFG-only sampler"
    (ks_asag, chain), (ks_cfg, plain_chain) = guided[0], plain[0]
    assert [n for n in chain] == ["ASAG", "CheckpointLoaderSimple"] and plain_chain == ["CheckpointLoaderSimple"]
    for key in ("steps", "cfg", "sampler_name", "scheduler", "denoise"):
        assert wc.widget(ks_asag, key) == wc.widget(ks_cfg, key), f"the A/B differs in {key}"
    assert wc.widget(ks_asag, "steps") == 25
    for input_name in ("positive", "negative", "latent_image"):
        assert wc.source(wf, ks_asag, input_name) == wc.source(wf, ks_cfg, input_name)


def test_sdxl_guider(workflows):
    wf = workflows["sdxl_asag_guider.json"]
    types = {n["type"] for n in wf["nodes"]}
    assert {"SamplerCustomAdvanced", "ASAGGuider", "RandomNoise", "KSamplerSelect", "EmptyLatentImage"} <= types
    assert types & {"BasicScheduler", "KarrasScheduler"}
    (sca,) = wc.nodes_of(wf, "SamplerCustomAdvanced")
    assert wc.source(wf, sca, "guider")[0]["type"] == "ASAGGuider"
    assert wc.source(wf, sca, "noise")[0]["type"] == "RandomNoise"
    (loader,) = wc.nodes_of(wf, "CheckpointLoaderSimple")
    assert wc.widget(loader, "ckpt_name") == "sd_xl_base_1.0.safetensors"


def test_sd35(workflows):
    wf = workflows["sd35_asag.json"]
    (clip,) = wc.nodes_of(wf, "TripleCLIPLoader")
    assert [wc.widget(clip, f"clip_name{i}") for i in (1, 2, 3)] == [
        "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"]
    assert wc.nodes_of(wf, "EmptySD3LatentImage")
    (ks,) = wc.nodes_of(wf, "KSampler")
    chain = [n["type"] for n in wc.upstream(wf, ks)]
    assert chain == ["ASAG", "ModelSamplingSD3", "CheckpointLoaderSimple"]
    assert wc.widget(wc.upstream(wf, ks)[-1], "ckpt_name") == "sd3.5_large.safetensors"


def test_flux(workflows):
    wf = workflows["flux_asag.json"]
    (unet,) = wc.nodes_of(wf, "UNETLoader")
    assert wc.widget(unet, "unet_name") == "flux1-dev.safetensors"
    (clip,) = wc.nodes_of(wf, "DualCLIPLoader")
    assert (wc.widget(clip, "clip_name1"), wc.widget(clip, "clip_name2"), wc.widget(clip, "type")) == (
        "clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")
    (vae,) = wc.nodes_of(wf, "VAELoader")
    assert wc.widget(vae, "vae_name") == "ae.safetensors"
    (ks,) = wc.nodes_of(wf, "KSampler")
    assert wc.widget(ks, "cfg") == 1
    assert [n["type"] for n in wc.upstream(wf, ks)] == ["ASAG", "UNETLoader"]
    assert wc.source(wf, ks, "positive")[0]["type"] == "FluxGuidance"


def test_unconditional(workflows):
    wf = workflows["unconditional_asag.json"]
    for enc in wc.nodes_of(wf, "CLIPTextEncode"):
        assert wc.widget(enc, "text") == "", "the unconditional setting has an empty prompt"
    for ks in wc.nodes_of(wf, "KSampler"):
        assert wc.widget(ks, "cfg") == 1
    guided, plain = _asag_sampler(wf, "unconditional_asag.json")
    assert len(guided) == 1 and len(plain) == 1
    (loader,) = wc.nodes_of(wf, "CheckpointLoaderSimple")
    assert wc.widget(loader, "ckpt_name") == "sd_xl_base_1.0.safetensors"


def test_controlnet(workflows):
    wf = workflows["controlnet_asag.json"]
    (apply_cn,) = wc.nodes_of(wf, "ControlNetApplyAdvanced")
    canny = wc.source(wf, apply_cn, "image")[0]
    assert canny["type"] == "Canny" and wc.source(wf, canny, "image")[0]["type"] == "LoadImage"
    assert wc.source(wf, apply_cn, "control_net")[0]["type"] == "ControlNetLoader"
    (ks,) = wc.nodes_of(wf, "KSampler")
    assert wc.source(wf, ks, "positive") == (apply_cn, 0) and wc.source(wf, ks, "negative") == (apply_cn, 1)
    assert [n["type"] for n in wc.upstream(wf, ks)] == ["ASAG", "CheckpointLoaderSimple"]
    (loader,) = wc.nodes_of(wf, "CheckpointLoaderSimple")
    assert wc.widget(loader, "ckpt_name") == "v1-5-pruned-emaonly-fp16.safetensors", "an SD1.5 ControlNet needs SD1.5"


def test_ipadapter_names_its_pack(workflows):
    wf = workflows[wc.THIRD_PARTY_FILE]
    assert {"IPAdapterUnifiedLoader", "IPAdapter"} <= {n["type"] for n in wf["nodes"]}
    text = "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] in wc.NOTE_TYPES)
    assert wc.THIRD_PARTY_PACK in text and wc.THIRD_PARTY_REPO in text
    (ks,) = wc.nodes_of(wf, "KSampler")
    assert [n["type"] for n in wc.upstream(wf, ks)] == [
        "ASAG", "IPAdapter", "IPAdapterUnifiedLoader", "CheckpointLoaderSimple"]
    for other in wc.WORKFLOW_FILES:
        if other != wc.THIRD_PARTY_FILE:
            assert not {n["type"] for n in workflows[other]["nodes"]} & set(wc.THIRD_PARTY_NODES), other


def test_ablation_grid(workflows):
    wf = workflows["ablation_asag.json"]
    settings = set()
    for adv in wc.nodes_of(wf, "ASAGAdvanced"):
        settings.add((wc.widget(adv, "cost"), wc.widget(adv, "iterations")))
        assert wc.widget(adv, "scale") == 1.5 and wc.widget(adv, "layers") == "auto"
        (ks, _), = wc.consumers(wf, adv)
        assert ks["type"] == "KSampler" and wc.reaches_save(wf, ks)
    assert {c for c, _ in settings} == {"adversarial", "similarity", "uniform"}
    assert {i for c, i in settings if c == "adversarial"} == {1, 2, 5}
    assert len(settings) == len(wc.nodes_of(wf, "ASAGAdvanced")) >= 5, "every branch is a different setting"


# ------------------------------------------------------------------------------------- the tables themselves

def test_builtin_tables_match_the_host():
    """OUR_NODES (the no-ComfyUI fallback) equals what ComfyUI loads from nodes/guidance_nodes.py."""
    host, specs = _host_specs()
    if host is None:
        pytest.skip("no ComfyUI found: the fallback tables are all there is to check against")
    for node_type in wc.OURS:
        assert wc.comparable(specs[node_type]) == wc.comparable(wc.Spec.from_table(wc.OUR_NODES[node_type])), node_type
    assert wc.EXPECTED_CORE <= set(specs), sorted(wc.EXPECTED_CORE - set(specs))


def test_model_table_is_complete():
    assert set(wc.MODEL_SOURCES) == set(wc.MODEL_FILES)
    for name, urls in wc.MODEL_SOURCES.items():
        assert urls and all(u.startswith("https://huggingface.co/") for u in urls), name


def _readme_model_rows():
    """(file, folder, {workflow short names}) for each row of the README's model table."""
    with open(wc.os.path.join(wc.ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("| file | folder | used by |")
    short_names = {name[:-5].replace("_asag", "") for name in wc.WORKFLOW_FILES}
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        file_cell, folder_cell, used_by = (cell.strip() for cell in line.strip("|").split("|"))
        used = {word for word in re.findall(r"[a-z0-9_]+", used_by) if word in short_names}
        rows.append((re.search(r"`([^`]+)`", file_cell).group(1), folder_cell.strip("`"), used))
    return rows


def test_readme_model_table_matches_the_workflows(workflows):
    """Each README row's file goes in the folder MODEL_FILES names, and exactly the workflows that
    name the file (in a widget, a download link or a Note) are listed as using it."""
    rows = _readme_model_rows()
    assert rows, "no model table in the README"
    for file_name, folder, used in rows:
        assert wc.MODEL_FILES[file_name] == folder, file_name
        whole_name = re.compile(r"(?<![\w.\-])" + re.escape(file_name))  # ae.safetensors is not wan2.2_vae's
        naming = {name[:-5].replace("_asag", "") for name, wf in workflows.items()
                  if whole_name.search(json.dumps(wf))}
        assert used == naming, f"README says {file_name} is used by {sorted(used)}; the workflows: {sorted(naming)}"
