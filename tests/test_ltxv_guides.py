"""LTXV's guide attention: LTXVAddGuide's keyframe tokens, at strengths other than 1 or with a spatial
attention mask, make ComfyUI 0.22 split each self-attention into query groups (comfy/ldm/lightricks/model.py,
``GuideAttentionMask`` / ``_attention_with_guide_mask``): the noisy tokens' queries against every key with a
key bias on the guide tokens, then the guide tokens' queries with a bias on the noisy keys. The chosen
block's self-attention (``attn1``) is recognised by what the module is, so every group gets the plan: the
rectangular plan of that call's queries against all keys. ComfyUI 0.3.64 has no guide mask: one call.

Checked, on the tiny LTXV (3 blocks, ``auto`` = b1) through KSampler with 2 latent frames + 1 guide frame
of 4 x 4 tokens: the exact Sinkhorn calls per model evaluation with their query and key counts, only in
the chosen block, and the fast path equal to the separate pass to 1e-5 relative.
"""

from __future__ import annotations

import pytest
import sampling
import tiny_dits
import torch
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2
FRAME_TOKENS = 4 * 4  # one latent frame of the 128 x 128 video: 4 x 4 patches of 1
NOISY, GUIDE = 2 * FRAME_TOKENS, FRAME_TOKENS  # 9 frames -> 2 latent frames; the guide appends 1


def _has_guide_masks():
    """Whether this ComfyUI splits guide self-attention into query groups (0.22 and newer)."""
    import comfy.ldm.lightricks.model as ltx

    return hasattr(ltx, "GuideAttentionMask")


def _guided_inputs(strength, spatial_mask):
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo, LTXVAddGuide

    pos, neg = tiny_dits.conditioning("ltxv")
    (empty,) = EmptyLTXVLatentVideo.execute(128, 128, 9, 1).result
    extra = {}
    if spatial_mask:  # a pixel-space mask: the left half of the guide conditions, the right half does not
        mask = torch.zeros(1, 128, 128)
        mask[:, :, :64] = 1.0
        extra["attention_mask"] = mask
    pos, neg, latent = LTXVAddGuide.execute(pos, neg, tiny_dits.ltxv_vae(), empty, tiny_dits.video_frames(1, 128, 128),
                                            0, strength, **extra).result
    return pos, neg, latent


def _expected_calls(strength, spatial_mask):
    """(queries, keys) of the Sinkhorn calls in one model evaluation of the chosen block."""
    if _has_guide_masks() and (strength != 1.0 or spatial_mask):
        return [(NOISY, NOISY + GUIDE), (GUIDE, NOISY + GUIDE)]
    return [(NOISY + GUIDE, NOISY + GUIDE)]


CASES = [(0.5, False), (1.0, False), (2.0, False), (1.0, True)]


@pytest.fixture(scope="module")
def ltxv(host):
    return tiny_dits.ltxv()


@pytest.mark.parametrize("strength,spatial_mask", CASES, ids=["strength-0.5", "strength-1", "strength-2", "mask"])
def test_every_query_group_of_the_guide_attention_gets_the_plan(host, ltxv, strength, spatial_mask, sinkhorn_calls):
    if spatial_mask and not _has_guide_masks():
        # 0.3.64's LTXVAddGuide has no attention_mask input: the mask case asks what 0.22 added
        from comfy_extras.nodes_lt import LTXVAddGuide

        assert "attention_mask" not in {i.id for i in LTXVAddGuide.define_schema().inputs}
        return
    pos, neg, latent = _guided_inputs(strength, spatial_mask)
    out = {}
    for path in sampling.PATHS:
        sinkhorn_calls.clear()
        patched = sampling.asag_on(host, ltxv, path)
        (samples,) = host.nodes.KSampler().sample(patched, 1, STEPS, 3.0, "euler", "simple", pos, neg, latent)
        out[path] = samples["samples"]
        assert {call.layer.patch_key for call in sinkhorn_calls} == {("double_block", 1)}
        per_step = _expected_calls(strength, spatial_mask)
        assert sorted((c.tokens, c.keys) for c in sinkhorn_calls) == sorted(per_step * STEPS), path
        assert {call.rows for call in sinkhorn_calls} == {1}, "the adversarial row only"
    assert_relative(out["fast"], out["separate"], 1e-5)
    (plain,) = host.nodes.KSampler().sample(ltxv, 1, STEPS, 3.0, "euler", "simple", pos, neg, latent)
    assert (out["fast"] - plain["samples"]).abs().max() > 1e-3, "ASAG changed nothing"


# ---------------------------------------------------------------------------------------------
# LTX-2 (LTXAV, ComfyUI 0.22): the same guide masks on the video self-attention; audio untouched
# ---------------------------------------------------------------------------------------------

def _has_ltx2():
    import comfy.supported_models

    return hasattr(comfy.supported_models, "LTXAV")


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0], ids=["strength-0.5", "strength-1", "strength-2"])
def test_ltx2_video_guide_groups_get_the_plan_and_audio_its_own(host, strength, sinkhorn_calls):
    """LTXVAddGuide on LTX-2's video latent, then LTXVConcatAVLatent with the audio latent: the video
    self-attention (``attn1``) splits into the noisy and the guide query groups as on LTXV, each with its
    plan; the audio self-attention (``audio_attn1``) gets one plan over the audio tokens."""
    if not _has_ltx2():
        import comfy.model_base

        assert not hasattr(comfy.model_base, "LTXAV"), "a host without LTX-2's config has no LTX-2 model either"
        return
    import tiny_families as tf
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo, LTXVAddGuide, LTXVConcatAVLatent

    model = tf.build("ltxav")
    pos, neg = tf.conditioning("ltxav")
    (empty,) = EmptyLTXVLatentVideo.execute(128, 128, 9, 1).result
    pos, neg, video = LTXVAddGuide.execute(pos, neg, tiny_dits.ltxv_vae(), empty, tiny_dits.video_frames(1, 128, 128),
                                           0, strength).result
    audio_shape = tf.LTXAV_AUDIO
    (latent,) = LTXVConcatAVLatent.execute(video, {"samples": torch.zeros(1, *audio_shape)}).result
    layer = host.internal("nodes.plan").resolve(model, "auto")[0].patch_key
    out = {}
    for path in sampling.PATHS:
        sinkhorn_calls.clear()
        (samples,) = host.nodes.KSampler().sample(sampling.asag_on(host, model, path), 1, STEPS, 3.0, "euler",
                                                  "simple", pos, neg, latent)
        out[path] = samples["samples"].unbind()[0]
        assert {call.layer.patch_key for call in sinkhorn_calls} == {layer}
        video_calls = [(NOISY, NOISY + GUIDE), (GUIDE, NOISY + GUIDE)] if strength != 1.0 else \
            [(NOISY + GUIDE, NOISY + GUIDE)]
        audio_call = (audio_shape[1], audio_shape[1])
        assert sorted((c.tokens, c.keys) for c in sinkhorn_calls) == sorted((video_calls + [audio_call]) * STEPS), path
    assert_relative(out["fast"], out["separate"], 1e-5)
