"""The cost table (``python -m benchmarks.cost`` -> docs/cost_table.json) and the FLOP attribution
behind it (``benchmarks/flops.py``).

- the attribution against a hand count of a small model, on the CPU and on the meta device;
- the committed JSON: the schema, every model and layer the issue asks for, the ideals exactly
  from after_share, the Sinkhorn count inside its analytic bounds;
- on the real architectures (host): every layer name in the JSON resolves as the node resolves
  it, ComfyUI's detection gives each config back, and a full-size Flux dev counted afresh on the
  meta device gives the committed numbers, its first block's after_share being 1 minus the
  embedders' share as torch's own per-module FLOP attribution counts it.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import attention_flops, count_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(ROOT, "docs", "cost_table.json")
REQUIRED = ("after_share", "ideal_over_cfg", "ideal_over_cfg1", "sinkhorn_tflops", "layer_attention_tflops")
# the models and the layers the issue names for them, beside auto / first / middle / last
MODELS = {
    "sd15": ("auto",), "sdxl": ("auto",), "sd35_large": ("auto", "b7-b9"), "sd35_medium": ("auto", "b7-b9"),
    "flux_dev": ("auto", "single30"), "qwen_image": ("auto",), "wan22_14b": ("auto", "b2", "b9", "b10"),
    "wan22_5b": ("auto", "b2", "b9", "b10"), "ltxv": ("auto", "b14", "b19"), "hunyuan_video": ("auto", "double2"),
    # the models new in ComfyUI 0.22 (and Qwen-Image-Edit), counted there at their templates' shapes
    "flux2_dev": ("auto",), "flux2_klein_4b": ("auto",), "flux2_klein_9b": ("auto",), "zimage_turbo": ("auto",),
    "qwen_image_edit": ("auto",), "hunyuan_video15": ("auto",), "ltx2": ("auto", "b29"),
    "ltx2_hires": ("auto", "b29"), "kandinsky5": ("auto",), "kandinsky5_image": ("auto",),
}


# ---------------------------------------------------------------------------------------------
# the attribution, by hand
# ---------------------------------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48, bias=False)
        self.proj = nn.Linear(16, 16, bias=False)

    def forward(self, x):
        q, k, v = self.qkv(x).view(1, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 10, 16))


class _Tiny(nn.Module):
    """10 tokens: embed 8 -> 16, three blocks (2 heads of 8), out 16 -> 4."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(_Block() for _ in range(3))
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_flop_attribution_matches_a_hand_count(device):
    model = _Tiny().to(device)
    x = torch.zeros(1, 10, 8, device=device)
    embed = 2 * 10 * 8 * 16  # 2 FLOPs per multiply-add; biases are not counted
    attention = 2 * 2 * 10 * 10 * 8 * 2  # QKᵀ and PV, 2 heads of 8
    block = 2 * 10 * 16 * 48 + attention + 2 * 10 * 16 * 16
    out = 2 * 10 * 16 * 4
    count = count_forward(lambda: model(x), {f"b{i}": b for i, b in enumerate(model.blocks)} | {"embed": model.embed})
    assert count.total == embed + 3 * block + out == 84480
    assert count.start == {"embed": 0, "b0": embed, "b1": embed + block, "b2": embed + 2 * block}
    assert count.inside == {"embed": embed, "b0": block, "b1": block, "b2": block}
    assert count.share_from(["b2", "b1"]) == 1 - (embed + block) / count.total  # from the first to run
    assert count.attention["b1"] == [(1, 2, 10, 10, 8, 8)] and count.attention["embed"] == []
    assert attention_flops(1, 2, 10, 10, 8) == attention


def test_a_module_that_never_runs_is_an_error():
    model = _Tiny()
    with pytest.raises(RuntimeError, match="never ran"):
        count_forward(lambda: model.embed(torch.zeros(1, 8)), {"b0": model.blocks[0]})


# ---------------------------------------------------------------------------------------------
# the committed table
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table():
    with open(TABLE) as f:
        return json.load(f)


def test_table_has_every_model_and_layer_in_the_schema(table):
    models = table["models"]
    assert set(models) == set(MODELS)
    for key, m in models.items():
        assert isinstance(m["resolution"], str) and m["row_tflops"] > 0, key
        roles = {r for e in m["layers"].values() for r in e["roles"]}
        assert {"first", "middle", "last"} <= roles, key
        for spec in MODELS[key]:
            assert spec in m["layers"], (key, spec)
        for spec, e in m["layers"].items():
            assert all(isinstance(e[k], float | int) for k in REQUIRED), (key, spec)


def test_every_row_was_counted_on_its_own_comfyui(table):
    from benchmarks.cost_models import BY_KEY, has

    runs = table["runs"]
    for key, m in table["models"].items():
        assert m["counted_on"] == BY_KEY[key].host, key
        assert key in runs[m["counted_on"]]["models"], key
        assert has(BY_KEY[key], m["counted_on"]), key
    assert sorted(k for run in runs.values() for k in run["models"]) == sorted(table["models"])


def test_ideals_follow_from_after_share_exactly(table):
    for key, m in table["models"].items():
        first = max(e["after_share"] for e in m["layers"].values())
        for spec, e in m["layers"].items():
            a = e["after_share"]
            assert 0 < a <= first <= 1, (key, spec)
            assert e["ideal_over_cfg"] == round(1 + a / 2, 6), (key, spec)
            assert e["ideal_over_cfg1"] == round(1 + a, 6), (key, spec)
            n = e["node_after_share"]
            assert e["node_ideal_over_cfg"] == round(1 + n / 2, 6) and e["node_ideal_over_cfg1"] == round(1 + n, 6)
            # the node shares nothing (a whole row), or the prefix without the embedders (a bit more than ideal)
            assert n == 1.0 if not e["node_shares_prefix"] else a <= n < 1, (key, spec)


def test_sinkhorn_count_lies_within_its_analytic_bounds(table):
    iterations = table["asag_settings"]["iterations"]
    for key, m in table["models"].items():
        for spec, e in m["layers"].items():
            attention, sinkhorn = e["layer_attention_tflops"], e["sinkhorn_tflops"]
            assert e["analytic_passes"] == 2 * iterations + 1
            assert attention > 0 and e["attention_calls"] >= e["perturbed_layers"], (key, spec)
            exact = sum(attention_flops(b, h, nq, nk, d, dv) for b, h, nq, nk, d, dv in e["attention_shapes"])
            assert exact / 1e12 <= attention + 1e-6, (key, spec)  # every listed shape occurs at least once
            head_dim = min(s[4] for s in e["attention_shapes"])  # the potentials' extra dims weigh most here
            upper = e["analytic_passes"] * (head_dim + 10) / head_dim
            assert 1 - 1e-4 <= e["sinkhorn_over_attention"] <= upper + 1e-4, (key, spec)
            assert sinkhorn == pytest.approx(e["sinkhorn_over_attention"] * attention, rel=1e-3, abs=2e-6)


# the block's own attention calls of the newer rows, worked out by hand from the template's latent, the
# patch size and the text length (never read from a run): {row: [(heads, tokens, head dim), ...]}
SELF_ATTENTION = {
    # FLUX.2: 1024x1024 -> 128 x 64 x 64 latent, patch 1; text padded to 512; one joint sequence
    "flux2_dev": [(48, 512 + 64 * 64, 128)], "flux2_klein_4b": [(24, 512 + 64 * 64, 128)],
    "flux2_klein_9b": [(32, 512 + 64 * 64, 128)],
    # Z-Image: 16 x 128 x 128, patch 2; 128 text tokens; each part padded to a multiple of 32 (they are)
    "zimage_turbo": [(30, 128 + 64 * 64, 128)],
    # Qwen-Image-Edit: 128 prompt + 37 * 37 vision tokens; target and reference 128 x 128 latents, patch 2
    "qwen_image_edit": [(24, 128 + 37 * 37 + 2 * 64 * 64, 128)],
    # HunyuanVideo 1.5: 1280x720, 121 frames -> 31 x 45 x 80 latent, patch 1; 128 text tokens
    "hunyuan_video15": [(16, 128 + 31 * 45 * 80, 128)],
    # LTX-2: audio self-attention (127 latents of 121 frames at 24 fps: ceil(121 / 24 * 25)), then video
    # (640x360 -> 11 x 20, 121 frames -> 16; the second stage 22 x 40)
    "ltx2": [(32, 127, 64), (32, 16 * 11 * 20, 128)], "ltx2_hires": [(32, 127, 64), (32, 16 * 22 * 40, 128)],
    # Kandinsky 5: visual tokens only (text enters by cross-attention); 1x2x2 patches
    "kandinsky5": [(28, 31 * 32 * 48, 64)], "kandinsky5_image": [(20, 64 * 64, 128)],
}


def test_newer_rows_attend_over_the_tokens_their_templates_give(table):
    for key, calls in SELF_ATTENTION.items():
        for spec, e in table["models"][key]["layers"].items():
            assert e["attention_shapes"] == sorted([1, h, n, n, d, d] for h, n, d in calls), (key, spec)
            assert e["attention_calls"] == len(calls) * e["perturbed_layers"], (key, spec)


# ---------------------------------------------------------------------------------------------
# on ComfyUI's real architectures (meta device)
# ---------------------------------------------------------------------------------------------

def _version():
    import comfyui_version

    return comfyui_version.__version__


@pytest.mark.host
def test_layer_names_resolve_on_the_real_architectures(host, table):
    """Every row this ComfyUI has builds from its seed, detection gives its config back and its layer
    names resolve as the nodes resolve them; a row of a newer ComfyUI's model finds no such model here
    (its config class is not in this ComfyUI: FLUX.2, Z-Image, HunyuanVideo 1.5, LTX-2, Kandinsky 5 on 0.3.64)."""
    import comfy.model_patcher
    import comfy.supported_models

    from benchmarks.cost_models import BY_KEY, available, build_on, detection_round_trip, has
    from benchmarks.host import pack_module

    resolve = pack_module(host, "nodes.plan").resolve
    cpu = torch.device("cpu")
    version = _version()
    present = [key for key in table["models"] if has(BY_KEY[key], version)]
    for key, m in table["models"].items():
        arch = BY_KEY[key]
        if key not in present:
            assert not available(arch), key
            assert not hasattr(comfy.supported_models, m["config_class"]), (version, key, m["config_class"])
            continue
        assert available(arch), key
        config, model = build_on(arch, torch.device("meta"))
        assert detection_round_trip(arch, config, model) == [], key
        assert type(config).__name__ == m["config_class"]
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
        for spec, e in m["layers"].items():
            assert len(resolve(patcher, spec)) == e["perturbed_layers"], (key, spec)
        assert resolve(patcher, "auto") == resolve(patcher, m["layers"]["auto"]["resolves_to"]), key


FLUX_EMBEDDERS = ("img_in", "time_in", "guidance_in", "vector_in", "txt_in")  # what Flux runs before double0


@pytest.mark.host
def test_full_size_flux_counted_afresh_gives_the_table(host, table):
    from benchmarks.cost import SinkhornCounter, measure
    from benchmarks.cost_models import BY_KEY, build_on, model_inputs, sdpa_transformer_options
    from benchmarks.host import pack_module

    arch = BY_KEY["flux_dev"]
    fresh = measure(host, arch, SinkhornCounter(host, torch.bfloat16), only={"double0", "single30"})
    committed = table["models"]["flux_dev"]
    assert fresh["row_tflops"] == committed["row_tflops"]
    for spec in ("double0", "single30"):
        for k in ("after_share", "layer_attention_tflops", "attention_shapes", "perturbed_layers"):
            assert fresh["layers"][spec][k] == committed["layers"][spec][k], (spec, k)

    # torch's own module attribution (FlopCounterMode's module tracker), not our hooks
    meta = torch.device("meta")
    _, model = build_on(arch, meta)
    x, sigma, conds = model_inputs(arch, model, meta)
    options = sdpa_transformer_options(pack_module(host, "nodes.comfy_contract").ATTENTION_OVERRIDE)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.apply_model(x, sigma, transformer_options=options, **conds)
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model.diffusion_model).__name__
    embedders = sum(per_module.get(f"{root}.{name}", 0) for name in FLUX_EMBEDDERS)
    assert 0 < embedders < counter.get_total_flops() / 1000
    assert counter.get_total_flops() / 1e12 == pytest.approx(committed["row_tflops"], abs=1e-6)
    assert fresh["layers"]["double0"]["after_share"] == pytest.approx(
        1 - embedders / counter.get_total_flops(), abs=1e-6)


@pytest.mark.host
@pytest.mark.parametrize("key", ["flux2_klein_4b", "qwen_image_edit"])
def test_newer_rows_counted_afresh_give_the_table(host, table, key):
    """FLUX.2 Klein (ComfyUI 0.22 only) and Qwen-Image-Edit (both hosts, counted on 0.22) counted afresh on
    this ComfyUI give the committed numbers; a ComfyUI without the model has no config class for it."""
    import comfy.supported_models

    from benchmarks.cost import SinkhornCounter, measure
    from benchmarks.cost_models import BY_KEY, available, has

    arch, committed = BY_KEY[key], table["models"][key]
    if not has(arch, _version()):
        assert not available(arch)
        assert not hasattr(comfy.supported_models, committed["config_class"])
        return
    specs = ("auto", next(s for s, e in committed["layers"].items() if "first" in e["roles"]))
    fresh = measure(host, arch, SinkhornCounter(host, torch.bfloat16), only=set(specs))
    assert fresh["row_tflops"] == committed["row_tflops"] and fresh["config_class"] == committed["config_class"]
    assert fresh["text_tokens"] == committed["text_tokens"]
    for spec in specs:
        for k in ("after_share", "layer_attention_tflops", "sinkhorn_tflops", "attention_shapes", "node_after_share"):
            assert fresh["layers"][spec][k] == committed["layers"][spec][k], (spec, k)
