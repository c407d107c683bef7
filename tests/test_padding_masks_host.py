"""Padded text in real ComfyUI DiTs: the Sinkhorn plan puts zero mass on the padded keys.

Lumina 2 and HunyuanVideo hand a key-padding mask built as ``(mask - 1) * finfo(dtype).max``
to their joint text+image self-attention, the attention ASAG perturbs. The tiny models of
tests/tiny_dits.py are sampled through ComfyUI's KSampler with the ASAG node and text shorter
than its padded length; every Sinkhorn call is recorded, its plan recomputed from the q, k and
mask it received (asag_core's ``sinkhorn_plan``) and checked: the output it returned is that
plan applied to v, a mask was passed, and the padded keys get exactly zero mass. LTXV builds
the same mask but gives it to its text cross-attention only, which ASAG leaves alone: checked
as such.

Lumina 2 differs between ComfyUI versions, and each host's own behaviour is asserted, told apart
by what ComfyUI's own Lumina 2 (no ASAG) hands its joint layers (:func:`lumina2_joint_input`):

* 0.3.64: ``patchify_and_embed`` builds the mask from the cond's ``attention_mask`` and trims
  the text to its first ``sum(mask)`` tokens before the joint layers (at batch 1), so right
  padding is masked in its text refiner only and the joint layers get an all-zero mask, and
  left padding (kept by that trim) is what reaches its perturbed layers, masked: zero plan mass.
* 0.22: ``patchify_and_embed`` sets ``cap_mask = None`` and keeps every text token: no mask
  reaches any of its attentions, the padded text tokens are ordinary keys of the joint layers
  (text first, then the image), and the Sinkhorn plan, like ComfyUI's own attention there,
  gives them mass.

ComfyUI's Lumina 2 and HunyuanVideo take a padding mask only in a batch of one (Lumina 2's
(B, L) mask reaches attention as a 2-D (Nq, Nk) mask; HunyuanVideo builds a (1, 1, L) one), so
the negative prompt here has another length (ComfyUI then runs cond and uncond apart). ASAG
runs the adversarial copy of a cond with a padding mask in a call of its own, on its batched
path too (checked against the separate pass, where another node holds the batch slot).
"""

import sys

import pytest
import tiny_dits
import torch

pytestmark = pytest.mark.host

STEPS = 2
PADDING = 3
# how ComfyUI fills padded keys in float32: (mask - 1) * finfo.max; found without asag_core's threshold
PADDED_BELOW = -torch.finfo(torch.float32).max / 2


def _pack(host, name):
    return sys.modules[f"{host.pack_module_name}.asag_core{name}"]


def _heads(t, heads, skip_reshape):
    if skip_reshape:
        return t
    if t.ndim == 4:  # (B, N, H, D), as some callers hand v over
        t = t.flatten(2)
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


@pytest.fixture
def recorded_plans(host, monkeypatch):
    """Every Sinkhorn call: (plan recomputed from its q/k/mask, padded-pair bool, plan @ v vs output error)."""
    module = host.internal("nodes.adversarial_call")
    core, common = _pack(host, ""), _pack(host, ".sinkhorn_common")
    real = module.sinkhorn_attention
    records = []

    def recording(q, k, v, heads, settings, layer, **layout):
        out = real(q, k, v, heads, settings, layer, **layout)
        skip = layout.get("skip_reshape", False)
        qh, kh, vh = (_heads(t, heads, skip).float() for t in (q, k, v))
        mask = layout.get("mask")
        plan = core.sinkhorn_plan(qh, kh, iterations=settings.iterations, lam=settings.lam, cost=settings.cost,
                                  mask=mask)
        shape = plan.shape
        bias = common.mask_bias(mask, shape, plan.device, torch.float32)
        padded = None if bias is None else (bias <= PADDED_BELOW).expand(shape)
        ours = out if layout.get("skip_output_reshape") else _heads(out, heads, False)
        records.append((plan, padded, float((plan @ vh - ours.float()).abs().max())))
        return out

    monkeypatch.setattr(module, "sinkhorn_attention", recording)
    return records


def lumina2_joint_input(cond):
    """What ComfyUI's own Lumina 2, without ASAG, hands its joint layers (``layers``) for
    ``cond``: (sequence length, mask or None), seen by a forward pre-hook on the first joint layer
    in one forward of the diffusion model, called with what ``Lumina2.extra_conds`` makes of the
    cond (``num_tokens`` = the mask's sum, the mask itself)."""
    dm = tiny_dits.lumina2().model.diffusion_model
    context, extra = cond[0]
    mask = extra["attention_mask"]
    seen = []
    handle = dm.layers[0].register_forward_pre_hook(lambda module, args: seen.append((args[0].shape[1], args[1])))
    try:
        with torch.no_grad():
            dm(tiny_dits.latent("lumina2")["samples"], torch.full((1,), 0.5), context, int(mask.sum()),
               attention_mask=mask, transformer_options={})
    finally:
        handle.remove()
    (joint,) = seen
    return joint


def _lumina2_tokens():
    """(text tokens, image tokens) of the padded Lumina 2 prompt."""
    _, _, height, width = tiny_dits.LATENT["lumina2"]
    return 7, (height // 2) * (width // 2)


def _assert_unmasked_padding(records, left):
    """0.22's Lumina 2: no mask; every text token, padding included, is a key of the joint
    layers (text first), and the plan gives the padded ones mass as it does any key."""
    text, image = _lumina2_tokens()
    padded_keys = slice(0, PADDING) if left else slice(text - PADDING, text)
    assert records, "the Sinkhorn attention never ran"
    for plan, padded, output_error in records:
        assert output_error < 1e-4, "the layer's output is not the recomputed plan applied to v"
        assert padded is None, "a mask reached the Sinkhorn attention, though none reaches ComfyUI's own"
        assert plan.shape[-1] == text + image, "the joint sequence is every text token (padding too) + image"
        assert (plan[..., padded_keys] > 0).all(), "a padded text key without mass"
        torch.testing.assert_close(plan.sum(-1), torch.ones(plan.shape[:-1]), atol=1e-5, rtol=0)


def _lumina2_masks_text(left):
    """Whether ComfyUI's own Lumina 2 masks the padded text of the joint layers (0.3.64) or hands
    them no mask at all (0.22); anything else is a Lumina 2 this file has not read."""
    pos, _ = tiny_dits.padded_conditioning("lumina2", padding=PADDING, left=left)
    length, mask = lumina2_joint_input(pos)
    text, image = _lumina2_tokens()
    if mask is None:
        assert length == text + image, "no mask, and yet the text was trimmed"
        return False
    assert length == text - PADDING + image, "a text mask, and yet the text was not trimmed"
    return True


def _with_another_calc_cond_batch(model):
    """``model`` with another node's ``sampler_calc_cond_batch_function`` (ComfyUI's own, passed
    through): ASAG then runs its adversarial branch as a separate model call of batch 1."""
    import comfy.samplers

    patched = model.clone()
    patched.set_model_sampler_calc_cond_batch_function(
        lambda a: comfy.samplers.calc_cond_batch(a["model"], a["conds"], a["input"], a["sigma"], a["model_options"])
    )
    return patched


def _sample_with_asag(host, family, separate_pass=True, left=False):
    model = tiny_dits.FAMILIES[family]()
    if separate_pass:
        model = _with_another_calc_cond_batch(model)
    model = host.node("ASAG").execute(model, 1.5).result[0]
    pos, _ = tiny_dits.padded_conditioning(family, padding=PADDING, left=left)
    _, neg = tiny_dits.conditioning(family, seed=1, tokens=5)  # another length: not batched with cond
    (out,) = host.nodes.KSampler().sample(
        model, 1, STEPS, 4.0, "euler", "normal", pos, neg, tiny_dits.latent(family), denoise=1.0
    )
    return out["samples"]


@pytest.mark.parametrize("family,left", [("hunyuan_video", False), ("lumina2", True)])
def test_padded_text_keys_get_zero_plan_mass(host, family, left, recorded_plans):
    assert torch.isfinite(_sample_with_asag(host, family, left=left)).all()
    if family == "lumina2" and not _lumina2_masks_text(left):
        _assert_unmasked_padding(recorded_plans, left)  # 0.22
        return
    assert recorded_plans, "the Sinkhorn attention never ran"
    for plan, padded, output_error in recorded_plans:
        assert output_error < 1e-4, "the layer's output is not the recomputed plan applied to v"
        assert padded is not None, "no mask reached the Sinkhorn attention"
        # the padded text tokens are keys of every query of the joint attention
        assert int(padded[0, 0, 0].sum()) == PADDING
        leak = float((plan * padded).sum(-1).max())
        assert (plan[padded] == 0).all(), f"up to {leak:.3f} of a row's mass on padding"
        torch.testing.assert_close(plan.sum(-1), torch.ones(plan.shape[:-1]), atol=1e-5, rtol=0)


def test_lumina2_right_padding_in_the_joint_layers(host, recorded_plans):
    """0.3.64 trims right padding before the joint layers (all-zero mask there); 0.22 keeps it,
    unmasked."""
    assert torch.isfinite(_sample_with_asag(host, "lumina2")).all()
    if not _lumina2_masks_text(left=False):
        _assert_unmasked_padding(recorded_plans, left=False)  # 0.22
        return
    image_tokens = _lumina2_tokens()[1]
    assert recorded_plans, "the Sinkhorn attention never ran"
    for plan, padded, output_error in recorded_plans:
        assert output_error < 1e-4
        assert plan.shape[-1] == 7 - PADDING + image_tokens, "the joint sequence is real text + image"
        assert padded is not None and not padded.any(), "a mask, with nothing masked"


def test_ltxv_padding_mask_stays_in_cross_attention(host, recorded_plans, monkeypatch):
    """LTXV's attention hands a mask to ``optimized_attention_masked`` on 0.3.64 and to
    ``optimized_attention(mask=...)`` on 0.22: both are watched."""
    import comfy.ldm.modules.attention as comfy_attention

    masks = []

    def spying(real):
        def spy(q, k, v, heads, mask=None, *args, **kwargs):
            if mask is not None:
                masks.append((q.shape, k.shape, mask))
            return real(q, k, v, heads, mask, *args, **kwargs)

        return spy

    for name in ("optimized_attention", "optimized_attention_masked"):
        monkeypatch.setattr(comfy_attention, name, spying(getattr(comfy_attention, name)))
    assert torch.isfinite(_sample_with_asag(host, "ltxv")).all()
    padded = [(q_shape, k_shape, mask) for q_shape, k_shape, mask in masks if (mask <= PADDED_BELOW).any()]
    assert padded, "LTXV built no padding mask"
    for q_shape, k_shape, mask in padded:
        assert q_shape[1] != k_shape[1], "a padded LTXV attention that is not text cross-attention"
        assert int((mask <= PADDED_BELOW).sum()) == PADDING * mask.shape[0]
    assert recorded_plans, "the Sinkhorn attention never ran"
    assert all(padded is None for _, padded, _ in recorded_plans), "LTXV's self-attention got a mask"
    assert all(error < 1e-4 for _, _, error in recorded_plans)


@pytest.mark.parametrize("family", ["lumina2", "hunyuan_video"])
def test_the_fast_path_samples_padded_text(host, family, recorded_plans):
    """Without another node on the batch slot: the cond with a padding mask gets its adversarial
    copy in a call of its own (ComfyUI would batch the two, and these models take a padding
    mask only in a batch of one), with zero plan mass on the padded keys."""
    left = family == "lumina2"
    out = _sample_with_asag(host, family, separate_pass=False, left=left)
    assert torch.isfinite(out).all() and recorded_plans
    if family == "lumina2" and not _lumina2_masks_text(left):
        _assert_unmasked_padding(recorded_plans, left)  # 0.22
    else:
        for plan, padded, output_error in recorded_plans:
            assert output_error < 1e-4 and padded is not None and int(padded[0, 0, 0].sum()) == PADDING
            assert (plan[padded] == 0).all()
    assert torch.equal(out, _sample_with_asag(host, family, separate_pass=True, left=left))
