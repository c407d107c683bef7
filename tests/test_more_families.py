"""ASAG on more of ComfyUI's DiT families than the five required ones (tests/tiny_dits.py).

Per family, sampled through ComfyUI's own KSampler: the unpatched model, the ASAG node at
scale 0 and at scale 1.5. Checked: finite output; scale 0 equals the unpatched sampler
exactly; scale 1.5 differs; the Sinkhorn attention ran, only in the plan's layers, the same
number of times in each, and only on the adversarial rows (the latent batch).

HunyuanDiT calls its attention without transformer_options; it is reached through the
per-model object patches of ``nodes/unreachable_attention.py`` and checked like the others.
"""


import pytest
import tiny_dits
import torch

pytestmark = pytest.mark.host

STEPS = 2
BATCH = 2

def sample(host, model, family, seed=1):
    pos, neg = tiny_dits.conditioning(family)
    (out,) = host.nodes.KSampler().sample(
        model, seed, STEPS, 4.0, "euler", "normal", pos, neg, tiny_dits.latent(family, batch=BATCH), denoise=1.0
    )
    return out["samples"]


def plan_of(host, model):
    module = host.internal("nodes.guidance_step")
    return module.carried_plan(model.model_options)


@pytest.mark.parametrize("family", list(tiny_dits.FAMILIES))
def test_asag_node_in_ksampler(host, family, sinkhorn_calls):
    model = tiny_dits.FAMILIES[family]()
    base = sample(host, model, family)
    assert torch.isfinite(base).all()

    off = sample(host, host.node("ASAG").execute(model, 0.0).result[0], family)
    assert torch.equal(off, base), "scale 0 must equal the unpatched sampler exactly"
    assert sinkhorn_calls == []

    patched = host.node("ASAG").execute(model, 1.5).result[0]
    guided = sample(host, patched, family)
    assert torch.isfinite(guided).all()
    assert not torch.allclose(guided, base, atol=1e-3), "ASAG at scale 1.5 changed nothing"

    chosen = {layer.patch_key for layer in plan_of(host, patched).layers}
    seen = [layer.patch_key for layer, _, _ in sinkhorn_calls]
    assert seen, "the Sinkhorn attention never ran"
    assert set(seen) == chosen, f"Sinkhorn ran in {sorted(set(seen))}, expected exactly {sorted(chosen)}"
    # one self- (or joint text+image) attention per chosen block and model evaluation: the
    # cross-attention to the text context inside the block (Wan, LTXV, Cosmos) is left alone
    for key in chosen:
        assert seen.count(key) == STEPS, f"{key}: {seen.count(key)} Sinkhorn calls in {STEPS} evaluations"
    assert {rows for _, rows, _ in sinkhorn_calls} == {BATCH}, "Sinkhorn attention must see the adversarial rows only"


@pytest.mark.parametrize("family", ["wan21", "wan22"])
def test_wan_cross_attention_is_left_alone_when_text_and_latent_have_equal_lengths(host, family, sinkhorn_calls):
    """Wan pads its text to 512 tokens; a latent of exactly 512 tokens must not make the
    cross-attention look like self-attention (the plan is found by structure, not token counts)."""
    model = tiny_dits.FAMILIES[family]()
    channels = tiny_dits.LATENT[family][0]
    latent = {"samples": torch.zeros(1, channels, 2, 32, 32)}  # 2 x 16 x 16 = 512 tokens after 1x2x2 patches
    pos, neg = tiny_dits.conditioning(family, tokens=512)
    patched = host.node("ASAG").execute(model, 1.5).result[0]
    host.nodes.KSampler().sample(patched, 1, 1, 4.0, "euler", "normal", pos, neg, latent, denoise=1.0)
    assert [tokens for _, _, tokens in sinkhorn_calls] == [512], "one self-attention per evaluation, not two"
