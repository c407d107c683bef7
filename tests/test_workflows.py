"""Static checks of the shipped workflows (workflows/*.json); no browser, no ComfyUI needed.

Two kinds of workflow (tests/workflow_checks.py): those made from ComfyUI's official templates
(comfyui-workflow-templates, installed from the registry at test time, ASAG_TEMPLATES_DIR) and four
SD1.5 workflows of this pack's own. A template workflow must be exactly what tests/workflow_notes.py
builds from the installed template, and with its ASAG nodes and Note taken out its settings must be the
template's, so a drifted setting, file, prompt or mode fails here. Against a real ComfyUI (found as
tests/comfy_host.py finds it): the template workflows' node types exist where they run
(``host``-marked), and the SD1.5 workflows' nodes match their definitions.
"""

from __future__ import annotations

import functools
import json

import pytest

from tests import workflow_checks as wc
from tests import workflow_notes as wn
from tests import workflow_readme as wr
from tests import workflow_templates as wt
from tests.comfy_host import comfyui_version, start_host


@functools.lru_cache(maxsize=1)
def _host_specs():
    """(host, {type: Spec}) with ComfyUI's core nodes and this pack loaded, or (None, None)."""
    host = start_host()
    if host is None:
        return None, None
    wc.load_core_nodes(host)
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


@pytest.fixture(scope="module")
def workflows():
    return {name: wc.load(name) for name in wc.WORKFLOW_FILES}


@pytest.fixture(scope="module")
def flat(workflows):
    """What runs of each workflow: its subgraphs' nodes in place of the subgraph nodes (wc.flatten)."""
    return {name: wc.flatten(wf) for name, wf in workflows.items()}


@pytest.fixture(scope="module")
def templates():
    """The installed official templates the workflows follow (fails, saying how to install them)."""
    try:
        return {name: wt.load_template(wn.TEMPLATE_WORKFLOWS[name][0]) for name in wc.TEMPLATE_WORKFLOW_FILES}
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def _fail(errors):
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


# ------------------------------------------------------------------------------------- the set

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


# ------------------------------------------------------------------------------------- template workflows

def test_the_installed_templates_are_the_followed_version():
    try:
        version = wt.installed_version()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    assert version == wt.TEMPLATES_VERSION, f"installed {version}: {wt.HOW_TO_INSTALL}"


@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_template_workflow_is_what_the_builder_makes(name, workflows, templates):
    """workflows/<name> is tests/workflow_notes.build of the installed template (python -m
    tests.workflow_notes rewrites them)."""
    built = json.loads(json.dumps(wn.build(name, templates[name])))
    assert built == workflows[name], f"{name} differs from its build: python -m tests.workflow_notes"


@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_template_settings_are_unchanged(name, workflows, templates):
    """With its ASAG nodes and Note taken out, the workflow has the template's nodes, modes, widget
    values (settings, files, prompts), links, subgraph interfaces and promoted widgets."""
    _fail(wt.settings_diff(wt.settings(wt.strip_asag(workflows[name])), wt.settings(templates[name])))


def test_the_drift_check_bites(templates):
    """A changed shift, a changed prompt and an enabled LoadImage are each reported."""
    name = "wan22_14b_t2v_asag.json"
    wf = wn.build(name, templates[name])
    shift = next(n for n in wt.all_nodes(wf) if n["type"] == "ModelSamplingSD3")
    shift["widgets_values"] = [8]
    errors = wt.settings_diff(wt.settings(wt.strip_asag(wf)), wt.settings(templates[name]))
    assert len(errors) == 1 and "ModelSamplingSD3" in errors[0] and "[8]" in errors[0], errors
    name = "wan22_5b_ti2v_asag.json"
    wf = wn.build(name, templates[name])
    for node in wt.all_nodes(wf):
        if node["type"] == "LoadImage":
            node["mode"] = 0
        if node["type"] == "CLIPTextEncode" and any("\u4e00" <= c <= "\u9fff" for c in node["widgets_values"][0]):
            node["widgets_values"] = ["low quality, blurry"]
    errors = wt.settings_diff(wt.settings(wt.strip_asag(wf)), wt.settings(templates[name]))
    assert len(errors) == 2 and {"mode" in e for e in errors} == {True, False}, errors


@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_asag_guides_every_sampler(name, workflows, templates):
    """Every sampler's and guider's model comes through an ASAG node at scale 1.5 in the same graph,
    one per model output of the template (both experts, both stages), in the mode of what it feeds."""
    wf = workflows[name]
    expected = sum(len({(link["origin_id"], link["origin_slot"]) for _, _, link in wt.guided_inputs(scope)})
                   for scope in wt.scopes(templates[name]))
    found = 0
    for scope in wt.scopes(wf):
        links = scope.links()
        for node, _, link in wt.guided_inputs(scope):
            source = scope.node(link["origin_id"])
            assert source["type"] == "ASAG", f"{name}: {node['type']} {node['id']} in {scope.name} is not guided"
            assert source.get("mode", 0) == node.get("mode", 0) or source.get("mode", 0) == 0
        for node in scope.nodes:
            if node["type"] == "ASAG":
                found += 1
                assert node["widgets_values"] == [wt.ASAG_SCALE]
                assert node["inputs"][0]["link"] in links and node["outputs"][0]["links"]
    assert found == expected > 0


@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_links_agree_in_every_graph(name, workflows):
    _fail(wc.check_scope_links(workflows[name]))


@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_no_node_covers_another(name, workflows):
    """In the graph and in every subgraph, no two nodes overlap (title bars included): the inserted
    ASAG nodes, the widened nodes and the moved notes found free room."""
    errors = []
    for scope in wt.scopes(workflows[name]):
        rects = [(n["id"], wt._rect(n)) for n in scope.nodes]
        for i, (a, ra) in enumerate(rects):
            errors += [f"{scope.name}: nodes {a} and {b} overlap" for b, rb in rects[i + 1:]
                       if wt._overlaps(ra, rb, pad=0)]
    _fail(errors)


@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_note_says_what_the_workflow_needs(name, workflows):
    """The Note names the template and the package version, the minimum ComfyUI, where ASAG sits, its
    settings' source, the cost (the table's numbers or a marked placeholder) and every model file with
    its folder and download link."""
    template_name, family, row_key, _ = wn.TEMPLATE_WORKFLOWS[name]
    wf = workflows[name]
    (note,) = [n for n in wf["nodes"] if n.get("title") == wt.NOTE_TITLE]
    assert note["type"] == "MarkdownNote", "a MarkdownNote: its links are clickable"
    text = note["widgets_values"][0]
    version, _ = wn.min_comfyui(template_name)
    assert f"`{template_name}`" in text and f"{wt.TEMPLATES_PACKAGE} {wt.TEMPLATES_VERSION}" in text
    assert f"ComfyUI ≥ {version}" in text
    assert wt.version_tuple(version) >= wt.version_tuple(wt.index_entry(template_name)["minComfyUIVersion"])
    assert text.count("\n- in ") + text.count("\n- inside ") == sum(
        1 for n in wt.all_nodes(wf) if n["type"] == "ASAG"), "one line per ASAG node"
    assert "scale 1.5" in text and "arXiv 2511.07499" in text
    table = wn.load_cost_table()
    if row_key is None:
        assert row_key not in table and f"{wn.NOT_COUNTED} (" in text and "×" not in text
    else:
        row = table[row_key]
        auto = row["layers"]["auto"]
        assert f"×{auto['node_ideal_over_cfg']:.2f} a CFG step" in text
        assert f"×{auto['node_ideal_over_cfg1']:.2f} a step at cfg 1" in text
        if not row["node_shares_prefix"]:  # the pack's whole row, and what sharing would cost
            assert (auto["node_ideal_over_cfg"], auto["node_ideal_over_cfg1"]) == (1.5, 2.0)
            assert f"×{auto['ideal_over_cfg']:.2f} and ×{auto['ideal_over_cfg1']:.2f}" in text
    for file_name, folder, url in wt.loader_files(wf):
        assert f"[{file_name}]({url}) → `models/{folder}/{file_name}`" in text, file_name
        assert url.startswith("https://"), (file_name, url)


def test_the_cost_follows_the_table():
    """The Note's cost paragraph carries the table's numbers: a changed table changes it; a family whose
    row shares no prefix gets the whole row's cost and what sharing would cost; no row, no number."""
    table = wn.load_cost_table()
    changed = json.loads(json.dumps(table))
    changed["flux_dev"]["layers"]["auto"]["node_ideal_over_cfg"] = 1.3141
    old = wn.cost_paragraph("FLUX.1 dev", "flux_dev", "", table)
    new = wn.cost_paragraph("FLUX.1 dev", "flux_dev", "", changed)
    assert old != new and "×1.31 a CFG step" in new
    changed["flux_dev"]["node_shares_prefix"] = False
    changed["flux_dev"]["layers"]["auto"]["ideal_over_cfg"] = 1.2718
    unshared = wn.cost_paragraph("FLUX.1 dev", "flux_dev", "", changed)
    assert "×1.31 a CFG step" in unshared and "×1.27 and" in unshared and "×1.27 and" not in new
    missing = wn.cost_paragraph("FLUX.1 dev", "flux_dev", "", {})
    assert wn.NOT_COUNTED in missing and "×" not in missing


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_opens_readable_in_the_template_browser(name, workflows, templates):
    """Frontend 1.58.1 fits a template to the window (1600x1000): at least 0.6, below which it draws
    nodes as empty boxes, and never smaller than the official template it follows (test_e2e_browser
    measures the same scale in the page). The exceptions (wn.OPENS_SMALL: HunyuanVideo 1.5) are those
    whose nodes, at their sizes, cover more than the window shows at 0.6 even with no gap between them,
    and their Note says so with both scales."""
    wf = workflows[name]
    scale = wt.fit_scale(wf)
    if name in templates:
        assert scale >= wt.fit_scale(templates[name]), f"{name} opens smaller than its template"
    if name not in wn.OPENS_SMALL:
        assert scale >= wt.FIT_TARGET, f"{name} opens at {scale:.2f}, below {wt.FIT_TARGET}"
        return
    assert scale < wt.FIT_TARGET, f"{name} now opens at {scale:.2f}: take it out of wn.OPENS_SMALL"
    room = [side * wt.FIT_ZOOM / wt.FIT_TARGET - 2 * wt.FIT_PADDING for side in wt.WINDOW]
    covered = sum(n["size"][0] * (n["size"][1] + wt.TITLE_HEIGHT) for n in wf["nodes"])
    assert covered > room[0] * room[1], f"{name}'s nodes would fit at {wt.FIT_TARGET}: lay them out"
    (note,) = [n["widgets_values"][0] for n in wf["nodes"] if n.get("title") == wt.NOTE_TITLE]
    assert f"{scale:.2f}" in note and f"{wt.fit_scale(templates[name]):.2f}" in note, "the Note gives both scales"


@pytest.mark.parametrize("name", wc.WORKFLOW_FILES)
def test_saved_view_is_clear_of_the_interface(name, workflows):
    """A dropped file opens at its saved view: the whole root graph inside SAFE_AREA, right of the
    sidebar and below the tab bar and the Run toolbar."""
    ds = workflows[name]["extra"]["ds"]
    x, y, width, height = wt.root_bounds(workflows[name])
    left, top, right, bottom = wt.SAFE_AREA
    page = ((x + ds["offset"][0]) * ds["scale"], (y + ds["offset"][1]) * ds["scale"])
    assert page[0] >= left - 1 and page[1] >= top - 1, (name, page)
    assert page[0] + width * ds["scale"] <= right + 1 and page[1] + height * ds["scale"] <= bottom + 1


@pytest.mark.host
@pytest.mark.parametrize("name", wc.TEMPLATE_WORKFLOW_FILES)
def test_template_node_types_exist_where_the_workflow_runs(name, host, workflows):
    """On a ComfyUI at or above the workflow's minimum every node type exists (whether each node's
    inputs pass is ComfyUI's own /prompt validation, in test_e2e_browser). Below it (0.3.64 for the
    workflows whose templates ask for a later ComfyUI) the workflow is validated on the newer host only."""
    _, specs = _host_specs()
    types, version = wc.node_types(workflows[name]), comfyui_version(host.root)
    unknown = sorted(types - set(specs))
    if version >= wn.needs_comfyui(name):
        assert not unknown, f"ComfyUI {version} (>= {wn.needs_comfyui(name)}) lacks {unknown} for {name}"
    else:
        assert types & set(specs), f"{name}: ComfyUI {version} knows none of its nodes"


# ------------------------------------------------------------------------------------- this pack's SD1.5 workflows

@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_structure_and_links(name, workflows, flat):
    """The graph's structure and links, every subgraph's links, and the links of what runs (the
    subgraphs joined in)."""
    wf = workflows[name]
    _fail(wc.check_structure(wf) + wc.check_links(wf) + wc.check_scope_links(wf) + wc.check_links(flat[name]))


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_node_types_are_core_ours_or_the_named_pack(name, flat, core_types):
    wf = flat[name]
    allowed = core_types | set(wc.OURS) | set(wc.FRONTEND_ONLY)
    if name == wc.THIRD_PARTY_FILE:
        allowed |= set(wc.THIRD_PARTY_NODES)
    unknown = sorted({n["type"] for n in wf["nodes"]} - allowed)
    assert not unknown, f"{name}: node types that are not core, ours or {wc.THIRD_PARTY_PACK}'s: {unknown}"
    assert {n["type"] for n in wf["nodes"]} & set(wc.OURS), f"{name} uses none of this pack's nodes"


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_nodes_match_their_definitions(name, flat, specs):
    """Sockets, outputs, required connections and widget values (count, type, range, choices), of the
    nodes inside subgraphs too."""
    wf = flat[name]
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


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_model_files_are_official(name, flat):
    _fail(wc.check_models(flat[name]))


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_layout_is_tidy(name, workflows):
    """In the graph and in every subgraph."""
    wf = workflows[name]
    _fail(wc.check_layout(wf) + [f"{sub['name']}: {e}" for sub in wf.get("definitions", {}).get("subgraphs", [])
                                 for e in wc.check_layout(sub)])


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_note_explains_the_workflow(name, flat):
    wf = flat[name]
    notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] in wc.NOTE_TYPES]
    assert notes, f"{name} has no Note"
    text = "\n".join(notes)
    assert "ASAG" in text and "models/" in text, f"{name}: the Note must say what it shows and where models go"
    loader_files = {v for n in wf["nodes"] if n["type"] not in wc.NOTE_TYPES
                    for v in n.get("widgets_values", []) if isinstance(v, str) and v in wc.MODEL_FILES}
    for file_name in loader_files:
        assert f"models/{wc.MODEL_FILES[file_name]}/{file_name}" in text, f"{name}: the Note does not place {file_name}"


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_sd15_note_says_why_sd15(name, workflows):
    """SD1.5 is kept only where it serves what no template does; the Note says which (as README does)."""
    text = "\n".join(n["widgets_values"][0] for n in workflows[name]["nodes"] if n["type"] in wc.NOTE_TYPES)
    assert f"**Why SD1.5:** {wr.OWN_ROWS[name][1]}." in text


@pytest.mark.parametrize("name", wc.OWN_WORKFLOW_FILES)
def test_every_sampler_is_saved_and_asag_is_used(name, flat):
    wf = flat[name]
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


@pytest.mark.parametrize("name,ckpt,size", [("sd15_asag.json", "v1-5-pruned-emaonly-fp16.safetensors", 512)])
def test_ab_workflows(name, ckpt, size, flat):
    wf = flat[name]
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


def test_controlnet(flat):
    wf = flat["controlnet_asag.json"]
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


def test_ablation_grid(workflows, flat):
    """Five ASAGAdvanced settings and CFG only, each sampled, decoded and saved; each branch in a
    subgraph of its own, its saved image at the root (the grid a user sees)."""
    wf = flat["ablation_asag.json"]
    settings = set()
    for adv in wc.nodes_of(wf, "ASAGAdvanced"):
        settings.add((wc.widget(adv, "cost"), wc.widget(adv, "iterations")))
        assert wc.widget(adv, "scale") == 1.5 and wc.widget(adv, "layers") == "auto"
        (ks, _), = wc.consumers(wf, adv)
        assert ks["type"] == "KSampler" and wc.reaches_save(wf, ks)
    assert {c for c, _ in settings} == {"adversarial", "similarity", "uniform"}
    assert {i for c, i in settings if c == "adversarial"} == {1, 2, 5}
    assert len(settings) == len(wc.nodes_of(wf, "ASAGAdvanced")) >= 5, "every branch is a different setting"
    root = workflows["ablation_asag.json"]
    branches = [wc.source(root, save, "images")[0]["type"] for save in wc.nodes_of(root, "SaveImage")]
    assert len(branches) == len(set(branches)) == len(wc.nodes_of(wf, "KSampler")) == 6
    assert set(branches) == wt.subgraph_ids(root), "every saved image comes straight from its branch's subgraph"
    for sub in root["definitions"]["subgraphs"]:
        assert [n["type"] for n in sub["nodes"] if n["type"] in wc.SAMPLERS] == ["KSampler"], sub["name"]


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
