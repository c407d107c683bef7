"""Every required model family, sampled through ComfyUI's own samplers with this pack's nodes.

Each family is a tiny random-weight instance of the real ComfyUI architecture. Checked:
finite output; scale 0 equals the unpatched sampler exactly; scale > 0 differs; the Sinkhorn
attention ran in exactly the chosen layers, the expected number of times, and only on the
adversarial rows; with the Sinkhorn plan swapped for ordinary attention the guided sample
equals the unguided one (so nothing but the plan separates the adversarial branch).
"""


import pytest
import sampling
import tiny_models
import torch
from sampling import STEPS, assert_same_sample, ksampler

pytestmark = pytest.mark.host

FAMILIES = ["sd15", "sd20", "sdxl", "sd3", "flux"]

# Sinkhorn calls per model evaluation for each chosen layer: one attention per U-Net attn1 and per
# Flux block; SD3.5-style joint blocks listed in x_block_self_attn_layers run a second,
# image-only self-attention (tiny_models.sd3 gives block 1 one).
EXPLICIT = {
    "sd15": ("d0, u1", None),
    "sd20": ("d1-d1, m0, u0", None),
    "sdxl": ("d1.1, u0-1", None),
    "sd3": ("b0, b1", {("double_block", 0): 1, ("double_block", 1): 2}),
    "flux": ("double0, single2-3", None),
}
AUTO_CALLS = {"sd3": 2}  # auto on the 3-block SD3 is b1, which has the extra self-attention


@pytest.fixture(scope="module")
def models(host):
    return {family: tiny_models.FAMILIES[family]() for family in FAMILIES}


def plan_of(host, model):
    module = host.internal("nodes.guidance_step")
    return module.carried_plan(model.model_options)


def _check_calls(calls, plan, evaluations, rows, per_layer=None):
    chosen = {layer.patch_key for layer in plan.layers}
    seen = [layer.patch_key for layer, _, _ in calls]
    assert set(seen) == chosen, f"Sinkhorn ran in {sorted(set(seen))}, expected exactly {sorted(chosen)}"
    for key in chosen:
        expected = evaluations * (per_layer or {}).get(key, 1)
        assert seen.count(key) == expected, f"{key}: {seen.count(key)} calls, expected {expected}"
    assert {r for _, r, _ in calls} == {rows}, "Sinkhorn attention must see the adversarial rows only"


@pytest.mark.parametrize("family", FAMILIES)
def test_asag_node_in_ksampler(host, models, family, sinkhorn_calls):
    model = models[family]
    base = ksampler(host, model, family)
    off = ksampler(host, sampling.patch(host, "ASAG", model, scale=0.0), family)
    assert torch.equal(off, base), "scale 0 must equal the unpatched sampler exactly"
    assert sinkhorn_calls == []

    patched = sampling.patch(host, "ASAG", model, scale=1.5)
    guided = ksampler(host, patched, family, batch=2)
    assert torch.isfinite(guided).all()
    base2 = ksampler(host, model, family, batch=2)
    assert not torch.allclose(guided, base2, atol=1e-3), "ASAG at scale 1.5 changed nothing"
    plan = plan_of(host, patched)
    _check_calls(sinkhorn_calls, plan, STEPS, rows=2,
                 per_layer={layer.patch_key: AUTO_CALLS.get(family, 1) for layer in plan.layers})


@pytest.mark.parametrize("family", FAMILIES)
def test_explicit_layers(host, models, family, sinkhorn_calls):
    spec, per_layer = EXPLICIT[family]
    patched = sampling.patch(host, "ASAGAdvanced", models[family], layers=spec)
    out = ksampler(host, patched, family)
    assert torch.isfinite(out).all()
    _check_calls(sinkhorn_calls, plan_of(host, patched), STEPS, rows=1, per_layer=per_layer)


def test_auto_layers_are_the_documented_defaults(host, models):
    unet = plan_of(host, sampling.patch(host, "ASAG", models["sdxl"]))
    assert {layer.part for layer in unet.layers} == {"middle"} and len(unet.layers) == 2  # SDXL-like middle: depth 2
    flux = plan_of(host, sampling.patch(host, "ASAG", models["flux"]))
    assert [layer.patch_key for layer in flux.layers] == [("double_block", 1)]  # 3 double blocks -> double1
    sd3 = plan_of(host, sampling.patch(host, "ASAG", models["sd3"]))
    assert [layer.patch_key for layer in sd3.layers] == [("double_block", 1)]


# the similarity cost with no Sinkhorn iteration and lam 1 is softmax(QK^T/sqrt(d)): ordinary attention
PLAIN_ATTENTION_PLAN = {"cost": "similarity", "iterations": 0, "lam": 1.0}


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_plan_separates_the_adversarial_branch(host, models, family, sinkhorn_calls):
    model = models[family]
    base = ksampler(host, model, family, batch=2)
    plain_plan = sampling.patch(host, "ASAGAdvanced", model, scale=3.0, **PLAIN_ATTENTION_PLAN)
    guided = ksampler(host, plain_plan, family, batch=2)
    assert sinkhorn_calls, "the patched layers never ran"
    assert_same_sample(guided, base)
    guider = sampling.asag_guider(host, plain_plan, family, 4.0, 3.0)
    via_guider = sampling.custom_advanced(host, guider, model, batch=2, family=family)
    assert_same_sample(via_guider, base)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cfg", [4.0, 1.0])
def test_guider_matches_the_node(host, models, family, cfg, sinkhorn_calls):
    model = models[family]
    reference = sampling.custom_advanced(host, sampling.cfg_guider(host, model, family, cfg), model, family=family)
    assert torch.equal(reference, ksampler(host, model, family, cfg=cfg)), "CFGGuider and KSampler disagree"

    node = ksampler(host, sampling.patch(host, "ASAG", model, scale=1.5), family, cfg=cfg)
    assert not torch.allclose(node, reference, atol=1e-3), f"ASAG did nothing at cfg {cfg}"
    sinkhorn_calls.clear()
    guider = sampling.asag_guider(host, model, family, cfg, 1.5)
    via_guider = sampling.custom_advanced(host, guider, model, family=family)
    assert_same_sample(via_guider, node)
    # the guider batches cond, uncond and adversarial rows; Sinkhorn sees only the adversarial one
    assert sinkhorn_calls and {rows for _, rows, _ in sinkhorn_calls} == {1}


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_guider_takes_settings_from_a_patched_model_and_applies_once(host, models, family, sinkhorn_calls):
    model = models[family]
    spec = EXPLICIT[family][0]
    patched = sampling.patch(host, "ASAGAdvanced", model, layers=spec, iterations=3, scale=2.0)
    node = ksampler(host, patched, family)
    evaluations_node = len(sinkhorn_calls)
    sinkhorn_calls.clear()
    via_guider = sampling.custom_advanced(host, sampling.asag_guider(host, patched, family, 4.0, 2.0), patched,
                                          family=family)
    assert_same_sample(via_guider, node)
    assert len(sinkhorn_calls) == evaluations_node, "ASAG applied twice (post-CFG term and guider)"
