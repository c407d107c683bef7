"""ASAG composed with what else a ComfyUI graph puts on the same model or conds.

Each test samples the tiny SD1.5 (tests/tiny_models.py) through ComfyUI's own samplers and
checks: the output is finite, ASAG ran (Sinkhorn calls recorded), the other feature's effect
is present (the result differs from ASAG without it), and where ASAG chains to another patch,
that patch was still called, on the rows it is meant for.

Every test runs on both of the ASAG node's paths: "fast" (cond, uncond and adversarial rows
in one batched call) and "separate" (another node holds the batch slot, so the adversarial
branch is a model pass of its own), and the two give the same sample.
"""

import model_state
import pytest
import sampling
import tiny_models
import torch
from sampling import assert_same_sample
from small_runs import SIZE, STEPS, run, run_guider

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def sd15(host):
    return tiny_models.sd15()


@pytest.fixture(scope="module", params=sampling.PATHS)
def path(request):
    return request.param


def with_asag(host, model, path, scale=2.0):
    return sampling.asag_on(host, model, path, scale=scale)


@pytest.fixture(scope="module")
def asag(host, sd15, path):
    return with_asag(host, sd15, path)


@pytest.fixture(scope="module")
def asag_only(host, asag):
    """ASAG alone on the plain conds: the reference every composition must differ from."""
    return run(host, asag)


def test_fast_and_separate_paths_give_the_same_sample(host, sd15, sinkhorn_calls):
    fast, separate = (run(host, with_asag(host, sd15, p)) for p in sampling.PATHS)
    assert sinkhorn_calls
    assert_same_sample(fast, separate)


class ModelCalls:
    """Counts forward calls of a module (the diffusion model, a ControlNet)."""

    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def take(self):
        count, self.count = self.count, 0
        return count


@pytest.fixture
def model_calls(sd15):
    calls = ModelCalls(sd15.model.diffusion_model)
    yield calls
    calls.handle.remove()


def _attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


def _differs(a, b):
    return not torch.allclose(a, b, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# ControlNet
# ---------------------------------------------------------------------------------------------

def test_controlnet(host, sd15, asag, asag_only, path, sinkhorn_calls):
    cnet = tiny_models.sd15_controlnet(sd15)
    control_calls = ModelCalls(cnet.control_model)
    try:
        hint = torch.rand(1, SIZE * 8, SIZE * 8, 3, generator=torch.Generator().manual_seed(0))
        pos, neg = tiny_models.conditioning("sd15")
        cpos, cneg = host.nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, hint, 1.0, 0.0, 1.0)

        controlled = run(host, sd15, positive=cpos, negative=cneg)
        plain_calls = control_calls.take()
        assert plain_calls == STEPS, "cond and uncond should share one ControlNet call per step"
        sinkhorn_calls.clear()
        both = run(host, asag, positive=cpos, negative=cneg)
        assert torch.isfinite(both).all()
        assert sinkhorn_calls, "ASAG did not run"
        assert _differs(both, asag_only), "the ControlNet had no effect under ASAG"
        assert _differs(both, controlled), "ASAG had no effect under the ControlNet"
        # the adversarial rows are rows of the controlled model: the ControlNet drives them too,
        # in the batched call (fast) or in a call of their own (separate)
        assert control_calls.take() == plain_calls + (STEPS if path == "separate" else 0)
    finally:
        control_calls.handle.remove()


# ---------------------------------------------------------------------------------------------
# other attention patches on the same model
# ---------------------------------------------------------------------------------------------

def test_attn2_patches_run_in_every_pass(host, sd15, asag_only, path, sinkhorn_calls):
    """IP-Adapter style: attn2 (cross-attention) replaced in some blocks to add attention over
    extra image tokens, plus a global attn2_patch; both must act in the adversarial pass too."""
    g = torch.Generator().manual_seed(7)
    image_tokens = {}
    replace_calls, patch_calls = [], []

    def ip_adapter(q, k, v, extra_options):
        replace_calls.append(list(extra_options["cond_or_uncond"]))
        inner = q.shape[-1]
        if inner not in image_tokens:
            image_tokens[inner] = (torch.randn(1, 4, inner, generator=g), torch.randn(1, 4, inner, generator=g))
        ik, iv = (t.expand(q.shape[0], -1, -1).to(q) for t in image_tokens[inner])
        return _attention(q, k, v, extra_options) + 0.7 * _attention(q, ik, iv, extra_options)

    def context_patch(n, context, value, extra_options):
        patch_calls.append(list(extra_options["cond_or_uncond"]))
        return n, context * 1.1, value

    ip = sd15.clone()
    ip.set_model_attn2_replace(ip_adapter, "input", 1, 0)
    ip.set_model_attn2_replace(ip_adapter, "middle", 0, 0)
    ip.set_model_attn2_patch(context_patch)
    patched_layers = 2
    all_attn2 = 7  # d0, d1, m0, u0-u3

    run(host, ip)
    plain_replace, plain_patch = len(replace_calls), len(patch_calls)
    replace_calls.clear(), patch_calls.clear()
    both = run(host, with_asag(host, ip, path))
    assert torch.isfinite(both).all() and sinkhorn_calls
    assert _differs(both, asag_only), "the attn2 patches had no effect under ASAG"
    if path == "separate":
        # one more model pass per step (the adversarial one), and the patches ran in it
        assert len(replace_calls) == plain_replace + STEPS * patched_layers
        assert len(patch_calls) == plain_patch + STEPS * all_attn2
        assert replace_calls.count([0]) >= STEPS * patched_layers, "the attn2 replace never saw the adversarial pass"
    else:
        # one batched call per step, as without ASAG; the adversarial rows ride in it as conditional
        # rows (slot 0), except in the shared prefix before ASAG's layer m0, which skips them
        assert len(replace_calls) == plain_replace and len(patch_calls) == plain_patch
        orders = [sorted(order) for order in replace_calls + patch_calls]
        assert all(order in ([0, 1], [0, 0, 1]) for order in orders), orders
        # the batch is [uncond, cond, adversarial]: the adversarial list goes first (with_adversarial_conds)
        assert replace_calls.count([1, 0, 0]) == STEPS, "the middle block's attn2 replace must see the adversarial row"


def _recording_attn1(calls, factor):
    def other_attn1(q, k, v, extra_options):
        calls.append((q.shape[0], list(extra_options["cond_or_uncond"])))
        return _attention(q * factor, k, v, extra_options)

    return other_attn1


def test_attn1_patch_on_another_layer(host, sd15, asag_only, path, sinkhorn_calls):
    calls = []
    other = sd15.clone()
    other.set_model_attn1_replace(_recording_attn1(calls, 1.7), "input", 1, 0)  # d0; ASAG's auto layer is m0
    run(host, other)
    plain = len(calls)
    calls.clear()
    both = run(host, with_asag(host, other, path))
    assert torch.isfinite(both).all()
    assert {layer.patch_key for layer, _, _ in sinkhorn_calls} == {("middle", 0, 0)}
    assert _differs(both, asag_only), "the other attn1 patch had no effect under ASAG"
    if path == "separate":
        assert len(calls) == plain + STEPS, "the other attn1 patch must also run in the adversarial pass"
        assert (1, [0]) in calls
    else:
        # one batched call per step; d0 lies in the shared prefix before m0, which leaves out the
        # adversarial row (a copy of the conditional one there)
        assert calls == [(2, [1, 0])] * STEPS


@pytest.mark.parametrize("key", [("middle", 0, 0), ("middle", 0)], ids=["block-transformer", "block"])
def test_attn1_patch_on_the_same_layer_is_chained(host, sd15, asag_only, key, path, sinkhorn_calls):
    """On ASAG's own layer, ASAG takes the adversarial rows and hands every other row to the
    patch that was there (3-part keys, and PAG-style 2-part block keys)."""
    calls = []
    other = sd15.clone()
    other.set_model_attn1_replace(_recording_attn1(calls, 1.7), *key)

    node = run(host, with_asag(host, other, path))
    assert torch.isfinite(node).all()
    assert _differs(node, asag_only), "the other patch had no effect"
    assert len(sinkhorn_calls) == STEPS and {rows for _, rows, _ in sinkhorn_calls} == {1}
    # Sinkhorn takes the adversarial row; the cond/uncond rows still go through the other patch,
    # with a cond_or_uncond that matches the rows it got
    assert len(calls) == STEPS and all(rows == 2 and sorted(order) == [0, 1] for rows, order in calls)

    calls.clear()
    sinkhorn_calls.clear()
    guider = sampling.asag_guider(host, other, "sd15", 4.0, 2.0)
    via_guider = run_guider(host, guider, other, steps=STEPS)
    # one batched call per step: cond, uncond and adversarial rows; Sinkhorn takes the adversarial
    # row, the other patch the two others, and sees a cond_or_uncond that matches the rows it got
    assert len(sinkhorn_calls) == STEPS and {rows for _, rows, _ in sinkhorn_calls} == {1}
    assert len(calls) == STEPS
    for rows, order in calls:
        assert rows == 2 and len(order) == 2, f"the chained patch got {rows} rows but cond_or_uncond {order}"
    assert_same_sample(via_guider, node)


def test_dit_attention_override_is_chained(host, path, sinkhorn_calls):
    """DiTs: another optimized_attention_override on the model (how ComfyUI lets patches
    swap a DiT's attention) keeps running under ASAG, for the rows ASAG leaves alone, with a
    cond_or_uncond that matches them."""
    calls = []

    def other_override(func, *args, **kwargs):
        q = args[0] if args else kwargs["q"]
        calls.append((q.shape[0], list((kwargs.get("transformer_options") or {}).get("cond_or_uncond", []))))
        return func(*args, **kwargs)

    model = tiny_models.flux().clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = other_override
    patched = sampling.asag_on(host, model, path, "ASAGAdvanced", scale=2.0, layers="double1")
    node = run(host, patched, family="flux")
    assert torch.isfinite(node).all() and sinkhorn_calls and calls
    assert all(rows == len(order) for rows, order in calls), "a cond_or_uncond that does not match the rows"

    calls.clear()
    sinkhorn_calls.clear()
    via_guider = run_guider(host, sampling.asag_guider(host, patched, "flux", 4.0, 2.0), patched, family="flux")
    assert {rows for _, rows, _ in sinkhorn_calls} == {1}
    assert (2, [0, 1]) in [(rows, sorted(order)) for rows, order in calls], "no call of the two plain rows"
    for rows, order in calls:
        assert rows == len(order), f"the chained override got {rows} rows but cond_or_uncond {order}"
    assert_same_sample(via_guider, node)


# ---------------------------------------------------------------------------------------------
# ComfyUI's built-in PAG and SAG
# ---------------------------------------------------------------------------------------------

def _one_step_additivity(host, base_model, other, other_and_asag, asag_model):
    """With one Euler step the sample is linear in the guided prediction, so the effects of two
    post-CFG guidances add up exactly (up to float error) when both really ran."""
    one = dict(steps=1)
    base = run(host, base_model, **one)
    effect_other = run(host, other, **one) - base
    effect_asag = run(host, asag_model, **one) - base
    effect_both = run(host, other_and_asag, **one) - base
    assert effect_other.abs().max() > 1e-3 and effect_asag.abs().max() > 1e-3
    torch.testing.assert_close(effect_both, effect_other + effect_asag, rtol=1e-4,
                               atol=1e-4 * float(effect_both.abs().max()))


@pytest.mark.parametrize("order", ["asag-after", "asag-before"])
def test_builtin_pag(host, sd15, asag, asag_only, order, path, model_calls, sinkhorn_calls):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance as pag_node

    pag = pag_node.execute(sd15, 3.0).result[0]
    if order == "asag-after":
        both = with_asag(host, pag, path)
    else:
        both = pag_node.execute(asag, 3.0).result[0]
    model_calls.take()
    out = run(host, both)
    assert torch.isfinite(out).all() and sinkhorn_calls
    passes = 3 if path == "separate" else 2
    assert model_calls.take() == passes * STEPS, "cond+uncond(+ASAG), PAG's (and ASAG's separate) pass each step"
    assert _differs(out, asag_only) and _differs(out, run(host, pag))
    _one_step_additivity(host, sd15, pag, both, asag)


def test_builtin_sag(host, sd15, asag, asag_only, path, model_calls, sinkhorn_calls):
    """SAG records attention in the middle block's attn1, ASAG's default layer."""
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    sag = SelfAttentionGuidance.execute(sd15, 0.8, 2.0).result[0]
    both = with_asag(host, sag, path)
    model_calls.take()
    node = run(host, both)
    assert torch.isfinite(node).all() and sinkhorn_calls
    passes = 3 if path == "separate" else 2
    assert model_calls.take() == passes * STEPS, "cond+uncond(+ASAG), SAG's (and ASAG's separate) pass each step"
    assert _differs(node, asag_only) and _differs(node, run(host, sag))
    _one_step_additivity(host, sd15, sag, both, asag)

    # the guider batches cond, uncond and adversarial rows through SAG's recording patch
    sinkhorn_calls.clear()
    guider = sampling.asag_guider(host, sag, "sd15", 4.0, 2.0)
    via_guider = run_guider(host, guider, sag, steps=STEPS)
    assert torch.isfinite(via_guider).all() and sinkhorn_calls
    assert_same_sample(via_guider, node)


# ---------------------------------------------------------------------------------------------
# LoRA weights
# ---------------------------------------------------------------------------------------------

LORA_KEYS = [
    "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight",
    "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_k.weight",
    "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_v.weight",
    "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_out.0.weight",
    "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "diffusion_model.output_blocks.3.1.proj_out.weight",
]


def _lora(model, rank=4, seed=11):
    """A random rank-``rank`` LoRA in ComfyUI's own adapter format on LORA_KEYS."""
    from comfy.weight_adapter.lora import LoRAAdapter

    g = torch.Generator().manual_seed(seed)
    sd = model.model.state_dict()
    patches = {}
    for key in LORA_KEYS:
        weight = sd[key]
        up = torch.randn(weight.shape[0], rank, generator=g) * 0.3
        down = torch.randn(rank, weight.shape[1:].numel(), generator=g) * 0.3
        if weight.ndim == 4:
            down = down.reshape(rank, *weight.shape[1:])
            up = up.reshape(weight.shape[0], rank, 1, 1)
        patches[key] = LoRAAdapter(set(), (up, down, float(rank), None, None, None))
    patched = model.clone()
    added = patched.add_patches(patches, 1.0)
    assert sorted(added) == sorted(LORA_KEYS)
    return patched


def test_lora_weights(host, sd15, asag, asag_only, path, sinkhorn_calls):
    import comfy.model_management

    weights = model_state.weights(sd15)
    lora = _lora(sd15)
    lora_only = run(host, lora)
    lora_then_asag = run(host, with_asag(host, lora, path))
    assert torch.isfinite(lora_then_asag).all() and sinkhorn_calls
    assert _differs(lora_then_asag, asag_only), "the LoRA had no effect under ASAG"
    assert _differs(lora_then_asag, lora_only), "ASAG had no effect on the LoRA'd model"
    # LoRA after ASAG: the same model
    asag_then_lora = run(host, _lora(asag))
    assert torch.equal(asag_then_lora, lora_then_asag)
    # and the LoRA leaves nothing behind in the un-LoRA'd ASAG model or the base weights
    assert torch.equal(run(host, asag), asag_only)
    comfy.model_management.unload_all_models()
    model_state.assert_weights_equal(sd15, weights)


# ---------------------------------------------------------------------------------------------
# batches, area and masked conds, img2img, inpainting
# ---------------------------------------------------------------------------------------------

def test_batch(host, sd15, asag, asag_only, sinkhorn_calls):
    batch = 3
    out = run(host, asag, batch=batch)
    assert torch.isfinite(out).all()
    assert {rows for _, rows, _ in sinkhorn_calls} == {batch}
    plain = run(host, sd15, batch=batch)
    for i in range(batch):
        assert _differs(out[i], plain[i]), f"ASAG had no effect on batch item {i}"
    # item 0 has the same noise as a batch of one: ASAG must not mix the items
    assert_same_sample(out[:1], asag_only)
    sinkhorn_calls.clear()
    guider = sampling.asag_guider(host, sd15, "sd15", 4.0, 2.0)
    via_guider = run_guider(host, guider, sd15, batch=batch)
    assert {rows for _, rows, _ in sinkhorn_calls} == {batch}
    assert_same_sample(via_guider, out)


def _tokens_by_call(sinkhorn_calls):
    return sorted({tokens for _, _, tokens in sinkhorn_calls})


def test_area_conds(host, sd15, asag, asag_only, sinkhorn_calls):
    pos, neg = tiny_models.conditioning("sd15")
    other, _ = tiny_models.conditioning("sd15", seed=3)
    # a second prompt on the top-left 32x32 pixels (4x4 latent) of the 64x64 image
    (area,) = host.nodes.ConditioningSetArea().append(other, 32, 32, 0, 0, 1.0)
    (combined,) = host.nodes.ConditioningCombine().combine(pos, area)
    out = run(host, asag, positive=combined, negative=neg)
    assert torch.isfinite(out).all() and sinkhorn_calls
    # the adversarial pass ran on the full image (4x4 middle tokens) and on the area (2x2)
    assert _tokens_by_call(sinkhorn_calls) == [4, (SIZE // 2) ** 2]
    assert _differs(out, asag_only), "the area cond had no effect under ASAG"
    assert _differs(out, run(host, sd15, positive=combined, negative=neg)), "ASAG had no effect with area conds"


def test_masked_conds(host, sd15, asag, asag_only, sinkhorn_calls):
    pos, neg = tiny_models.conditioning("sd15")
    other, _ = tiny_models.conditioning("sd15", seed=3)
    mask = torch.zeros(1, SIZE * 8, SIZE * 8)
    mask[:, :, : SIZE * 4] = 1.0  # left half
    for mode in ("default", "mask bounds"):
        sinkhorn_calls.clear()
        (masked,) = host.nodes.ConditioningSetMask().append(other, mask, mode, 1.0)
        (combined,) = host.nodes.ConditioningCombine().combine(pos, masked)
        out = run(host, asag, positive=combined, negative=neg)
        assert torch.isfinite(out).all() and sinkhorn_calls, mode
        assert _differs(out, asag_only), f"the masked cond ({mode}) had no effect under ASAG"
        assert _differs(out, run(host, sd15, positive=combined, negative=neg)), f"ASAG had no effect ({mode})"


def test_img2img(host, sd15, asag, sinkhorn_calls):
    init = {"samples": torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(2))}
    out = run(host, asag, latent=init, denoise=0.5)
    assert torch.isfinite(out).all()
    assert len(sinkhorn_calls) == STEPS, "one adversarial pass per step, also when denoise < 1"
    plain = run(host, sd15, latent=init, denoise=0.5)
    assert _differs(out, plain)
    assert _differs(out, run(host, asag, latent=init, denoise=1.0)), "denoise had no effect"


def test_inpainting_model(host, path, sinkhorn_calls):
    import node_helpers

    model = tiny_models.sd15_inpaint()
    assert model.model.concat_keys == ("mask", "masked_image")
    g = torch.Generator().manual_seed(4)
    image_latent = torch.randn(1, 4, SIZE, SIZE, generator=g)
    mask = torch.zeros(1, SIZE * 8, SIZE * 8)
    mask[:, SIZE * 2: SIZE * 6, SIZE * 2: SIZE * 6] = 1.0  # repaint the centre
    pos, neg = tiny_models.conditioning("sd15")
    # what InpaintModelConditioning attaches (it only adds the VAE encode of the masked pixels)
    masked_latent = image_latent * (1 - torch.nn.functional.interpolate(mask[:, None], size=(SIZE, SIZE)))
    pos, neg = (node_helpers.conditioning_set_values(c, {"concat_latent_image": masked_latent, "concat_mask": mask})
                for c in (pos, neg))
    (latent,) = host.nodes.SetLatentNoiseMask().set_mask({"samples": image_latent}, mask)
    channels = []  # input channels the U-Net sees in each pass
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda module, args: channels.append(args[0].shape[1]))
    try:
        patched = with_asag(host, model, path)
        out = run(host, patched, positive=pos, negative=neg, latent=latent)
        plain = run(host, model, positive=pos, negative=neg, latent=latent)
    finally:
        hook.remove()
    assert torch.isfinite(out).all() and sinkhorn_calls
    assert set(channels) == {9}, "every pass, the adversarial one included, must get the inpaint channels"
    inside = torch.nn.functional.interpolate(mask[:, None], size=(SIZE, SIZE)).bool().expand_as(out)
    assert _differs(out[inside], plain[inside]), "ASAG had no effect inside the mask"
    torch.testing.assert_close(out[~inside], plain[~inside], rtol=0, atol=1e-5)  # kept outside the mask
