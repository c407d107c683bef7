"""ASAG in the video workflows of ComfyUI's templates, on tiny random-weight models
(tests/tiny_dits.py) sampled through ComfyUI's own nodes.

- the Wan 2.2 14B two-expert handover as ``video_wan2_2_14B_t2v`` wires it: ModelSamplingSD3
  (shift 8) on each expert, KSamplerAdvanced on the high-noise expert for the first steps with
  leftover noise, then on the low-noise expert with noise disabled; ASAG on both experts, and on
  the high-noise expert only;
- image-to-video conditioning: Wan 2.2 5B's Wan22ImageToVideoLatent (start image in the latent,
  noise mask), Wan 2.1 WanImageToVideo (concat latent + mask, CLIP-vision tokens), LTXV's
  LTXVImgToVideo (noise mask) and LTXVAddGuide (a keyframe appended, keyframe_idxs), each with a
  real ComfyUI VAE / CLIP vision model at tiny widths;
- the plan spans every spatiotemporal token of the chosen block (recorded q/k token counts).

Reference for every equality: the separate pass (another node holds the batch slot, so the
adversarial branch is a model call of its own) and the unpatched model.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import sampling
import tiny_dits
import torch
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2
CFG = 3.5  # the Wan 2.2 14B template's cfg


@pytest.fixture
def qk_tokens(host, sinkhorn_calls, monkeypatch):
    """(query tokens, key tokens) of every Sinkhorn call; stacked on ``sinkhorn_calls``."""
    module = host.internal("nodes.adversarial_call")
    calls = []
    inner = module.sinkhorn_attention

    def recording(q, k, *args, **layout):
        axis = 2 if layout.get("skip_reshape") else 1
        calls.append((q.shape[axis], k.shape[axis]))
        return inner(q, k, *args, **layout)

    monkeypatch.setattr(module, "sinkhorn_attention", recording)
    return calls


class Forwards:
    """Every forward of a diffusion model, as a context manager: (batch rows, what one row got):
    input channels, the timestep's per-row shape (per frame / token where a noise mask sets
    one), and each tensor input's name and per-row shape (clip_fea, keyframe_idxs ...)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x, timestep = args[:2]  # ComfyUI's apply_model: diffusion_model(x, t, context=..., **extra_conds)
        tensors = {name: v for name, v in kwargs.items() if isinstance(v, torch.Tensor)}
        per_row = tuple(sorted((name, tuple(v.shape[1:])) for name, v in tensors.items() if v.shape[0] == x.shape[0]))
        self.calls.append((x.shape[0], (x.shape[1], tuple(timestep.shape[1:]), per_row)))

    @property
    def batches(self):
        return [rows for rows, _ in self.calls]

    @property
    def rows_got(self):
        return {row for _, row in self.calls}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _differs(a, b):
    return (a - b).abs().max() > 1e-3


def ksampler(host, model, positive, negative, latent, steps=STEPS, cfg=CFG, seed=1):
    (out,) = host.nodes.KSampler().sample(model, seed, steps, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


# ---------------------------------------------------------------------------------------------
# Wan 2.2 14B: two experts, KSamplerAdvanced handover
# ---------------------------------------------------------------------------------------------

HANDOVER_STEPS, HANDOVER_AT = 4, 2  # the template: 20 steps, 10 on each expert
WAN_FRAMES, WAN_SIDE = 5, 64  # EmptyHunyuanLatentVideo: (5 - 1) // 4 + 1 = 2 latent frames of 8 x 8
WAN_TOKENS = 2 * (8 // 2) * (8 // 2)  # 1x2x2 patches


@pytest.fixture(scope="module")
def experts(host):
    """The high- and low-noise experts, each through ModelSamplingSD3 (shift 8) as the template does."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    return {noise: ModelSamplingSD3().patch(tiny_dits.wan22_14b_expert(noise), 8.0)[0] for noise in ("high", "low")}


def wan_video_latent():
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo

    (latent,) = EmptyHunyuanLatentVideo().generate(WAN_SIDE, WAN_SIDE, WAN_FRAMES, 1)
    return latent


def handover(host, high, low, sinkhorn_calls, seed=3):
    """Both stages as the template runs them; returns (handover latent, final latent, Sinkhorn
    calls of each stage, forwards of each expert)."""
    pos, neg = tiny_dits.conditioning("wan21")
    advanced = host.nodes.KSamplerAdvanced()
    sinkhorn_calls.clear()
    with Forwards(high) as high_calls:
        (mid,) = advanced.sample(high, "enable", seed, HANDOVER_STEPS, CFG, "euler", "simple", pos, neg,
                                 wan_video_latent(), 0, HANDOVER_AT, "enable")
    on_high = list(sinkhorn_calls)
    sinkhorn_calls.clear()
    with Forwards(low) as low_calls:
        (out,) = advanced.sample(low, "disable", 0, HANDOVER_STEPS, CFG, "euler", "simple", pos, neg, mid,
                                 HANDOVER_AT, 10000, "disable")
    return mid, out["samples"], (on_high, list(sinkhorn_calls)), (high_calls, low_calls)


def test_two_expert_handover_fast_path_equals_separate_pass(host, experts, sinkhorn_calls):
    """ASAG on both experts (auto layer b1 on the high-noise one, all three blocks on the
    low-noise one, so that the counts tell the experts apart)."""
    runs = {}
    for path in sampling.PATHS:
        high = sampling.asag_on(host, experts["high"], path)
        low = sampling.asag_on(host, experts["low"], path, "ASAGAdvanced", layers="b0-b2")
        runs[path] = handover(host, high, low, sinkhorn_calls)
        _, _, (on_high, on_low), (high_calls, low_calls) = runs[path]
        steps_high, steps_low = HANDOVER_AT, HANDOVER_STEPS - HANDOVER_AT
        assert len(on_high) == steps_high * 1, f"{path}: one Sinkhorn call per step on the high-noise expert"
        assert len(on_low) == steps_low * 3, f"{path}: three (b0, b1, b2) per step on the low-noise expert"
        assert {rows for _, rows, _ in on_high + on_low} == {1}, "the adversarial rows only"
        assert {tokens for _, _, tokens in on_high + on_low} == {WAN_TOKENS}
        per_step = [3] if path == "fast" else [2, 1]
        assert high_calls.batches == per_step * steps_high and low_calls.batches == per_step * steps_low

    (mid_fast, out_fast, *_), (mid_separate, out_separate, *_) = runs["fast"], runs["separate"]
    assert_relative(mid_fast["samples"], mid_separate["samples"])
    assert_relative(out_fast, out_separate)
    plain_mid, plain_out, _, _ = handover(host, experts["high"], experts["low"], sinkhorn_calls)
    assert _differs(mid_fast["samples"], plain_mid["samples"]) and _differs(out_fast, plain_out)


def test_asag_on_the_high_noise_expert_only(host, experts, sinkhorn_calls):
    """ASAG's cost and effect stay on the high-noise expert's steps: the low-noise expert's
    steps are exactly the unpatched expert's, given the same handover latent."""
    high = sampling.asag_on(host, experts["high"], "fast")
    mid, out, (on_high, on_low), (high_calls, low_calls) = handover(host, high, experts["low"], sinkhorn_calls)
    assert len(on_high) == HANDOVER_AT and on_low == [], "Sinkhorn calls on the high-noise expert's steps only"
    assert high_calls.batches == [3] * HANDOVER_AT
    assert low_calls.batches == [2] * (HANDOVER_STEPS - HANDOVER_AT), "cond + uncond only on the low-noise expert"

    pos, neg = tiny_dits.conditioning("wan21")
    (alone,) = host.nodes.KSamplerAdvanced().sample(experts["low"], "disable", 0, HANDOVER_STEPS, CFG, "euler",
                                                    "simple", pos, neg, {**mid, "samples": mid["samples"].clone()},
                                                    HANDOVER_AT, 10000, "disable")
    assert torch.equal(out, alone["samples"])

    plain_mid, plain_out, _, _ = handover(host, experts["high"], experts["low"], sinkhorn_calls)
    assert _differs(mid["samples"], plain_mid["samples"]), "ASAG on the high-noise expert changed nothing"
    both = handover(host, high, sampling.asag_on(host, experts["low"], "fast"), sinkhorn_calls)[1]
    assert _differs(both, out), "ASAG on the low-noise expert would change the sample: only-high is a choice"


# ---------------------------------------------------------------------------------------------
# image-to-video conditioning
# ---------------------------------------------------------------------------------------------

class Conditioned(NamedTuple):
    """An image-to-video graph's output, and what each row of a model call must get: the latent
    tokens of the chosen block, the input channels, the timestep's per-row shape, tensor inputs."""

    model: object
    positive: list
    negative: list
    latent: dict
    tokens: int
    channels: int
    timestep: tuple
    inputs: dict


def wan22_5b_image_to_video(host):
    """Wan 2.2 5B: the start image encoded into frame 0 of the latent, a noise mask keeping it."""
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent

    image = tiny_dits.video_frames(1, 128, 128)
    (latent,) = Wan22ImageToVideoLatent.execute(tiny_dits.wan_vae("2.2"), 128, 128, 5, 1, start_image=image).result
    assert latent["samples"].shape == (1, 48, 2, 8, 8) and latent["noise_mask"].shape == (1, 1, 2, 8, 8)
    pos, neg = tiny_dits.conditioning("wan22")
    # a timestep per latent frame, from the noise mask
    return Conditioned(tiny_dits.wan22(), pos, neg, latent, 2 * 4 * 4, 48, (2,), {"denoise_mask": (48, 2, 8, 8)})


def wan21_image_to_video(host):
    """Wan 2.1 i2v: concat latent (start image) + mask and CLIP-vision tokens on both conds."""
    from comfy_extras.nodes_wan import WanImageToVideo

    image = tiny_dits.video_frames(1, WAN_SIDE, WAN_SIDE)
    (clip_vision_output,) = host.nodes.CLIPVisionEncode().encode(tiny_dits.clip_vision_h(), image, "center")
    pos, neg = tiny_dits.conditioning("wan21")
    pos, neg, latent = WanImageToVideo.execute(pos, neg, tiny_dits.wan_vae("2.1"), WAN_SIDE, WAN_SIDE, WAN_FRAMES, 1,
                                               start_image=image, clip_vision_output=clip_vision_output).result
    for cond in (pos, neg):
        assert {"concat_latent_image", "concat_mask", "clip_vision_output"} <= set(cond[0][1])
    model = tiny_dits.wan21_i2v()
    assert model.model.diffusion_model.img_emb is not None, "the i2v variant, with the image embedding"
    return Conditioned(model, pos, neg, latent, WAN_TOKENS, 36, (), {"clip_fea": (tiny_dits.CLIP_VISION_TOKENS, 1280)})


def ltxv_img_to_video(host):
    """LTXVImgToVideo: the image encoded into latent frame 0, whose noise mask is 1 - strength."""
    from comfy_extras.nodes_lt import LTXVImgToVideo

    pos, neg = tiny_dits.conditioning("ltxv")
    pos, neg, latent = LTXVImgToVideo.execute(pos, neg, tiny_dits.video_frames(1, 128, 128), tiny_dits.ltxv_vae(),
                                              128, 128, 9, 1, 1.0).result
    assert latent["samples"].shape == (1, 128, 2, 4, 4) and latent["noise_mask"].shape == (1, 1, 2, 1, 1)
    # a timestep per token, from the noise mask
    return Conditioned(tiny_dits.ltxv(), pos, neg, latent, 2 * 4 * 4, 128, (32, 1), {"denoise_mask": (128, 2, 4, 4)})


def ltxv_add_guide(host):
    """LTXVAddGuide: the guide image's latent appended as a keyframe (keyframe_idxs on the conds,
    its noise-mask frame 1 - strength): the model sees 2 + 1 latent frames."""
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo, LTXVAddGuide

    pos, neg = tiny_dits.conditioning("ltxv")
    (empty,) = EmptyLTXVLatentVideo.execute(128, 128, 9, 1).result
    pos, neg, latent = LTXVAddGuide.execute(pos, neg, tiny_dits.ltxv_vae(), empty, tiny_dits.video_frames(1, 128, 128),
                                            0, 1.0).result
    assert latent["samples"].shape == (1, 128, 3, 4, 4) and "keyframe_idxs" in pos[0][1]
    # per row: 3 coordinates (t, h, w) x 16 keyframe tokens; 0.22 adds a last dimension, each
    # token's [start, end] position (0.3.64: one position per coordinate)
    layouts = {3: (3, 16), 4: (3, 16, 2)}
    keyframes = pos[0][1]["keyframe_idxs"]
    assert keyframes.ndim in layouts and tuple(keyframes.shape[1:]) == layouts[keyframes.ndim], keyframes.shape
    inputs = {"denoise_mask": (128, 3, 4, 4), "keyframe_idxs": layouts[keyframes.ndim]}
    return Conditioned(tiny_dits.ltxv(), pos, neg, latent, 3 * 4 * 4, 128, (48, 1), inputs)


IMAGE_TO_VIDEO = {
    "wan22_5b_latent": wan22_5b_image_to_video,
    "wan21_i2v_clip_vision": wan21_image_to_video,
    "ltxv_img_to_video": ltxv_img_to_video,
    "ltxv_add_guide": ltxv_add_guide,
}


@pytest.mark.parametrize("workflow", list(IMAGE_TO_VIDEO))
def test_image_to_video(host, workflow, sinkhorn_calls, qk_tokens):
    graph = IMAGE_TO_VIDEO[workflow](host)
    model, pos, neg, latent = graph[:4]
    plain = ksampler(host, model, pos, neg, latent)
    assert torch.isfinite(plain).all()
    assert torch.equal(ksampler(host, sampling.asag_on(host, model, "fast", scale=0.0), pos, neg, latent), plain)
    assert sinkhorn_calls == []

    outs, forwards = {}, {}
    for path in sampling.PATHS:
        sinkhorn_calls.clear(), qk_tokens.clear()
        with Forwards(model) as forwards[path]:
            outs[path] = ksampler(host, sampling.asag_on(host, model, path), pos, neg, latent)
        assert len(sinkhorn_calls) == STEPS, f"{path}: one Sinkhorn call per step in the one chosen block"
        assert {rows for _, rows, _ in sinkhorn_calls} == {1}
        assert set(qk_tokens) == {(graph.tokens, graph.tokens)}, "Nq = Nk = every video token"
    # LTXV's T5 conds always carry attention_mask, and LTXV batches such masks: cond, uncond and the
    # adversarial copy in one call, as for the Wan models
    assert forwards["fast"].batches == [3] * STEPS and forwards["separate"].batches == [2, 1] * STEPS
    assert_relative(outs["fast"], outs["separate"])
    assert _differs(outs["fast"], plain)
    # every pass, the adversarial one included, got what the unpatched model's rows get: the image
    # conditioning, the CLIP-vision tokens, the keyframe positions, the noise mask's timesteps
    with Forwards(model) as unpatched:
        ksampler(host, model, pos, neg, latent)
    assert forwards["fast"].rows_got == forwards["separate"].rows_got == unpatched.rows_got
    ((channels, timestep, inputs),) = unpatched.rows_got
    assert (channels, timestep) == (graph.channels, graph.timestep)
    assert set(graph.inputs.items()) <= set(inputs), inputs


@pytest.mark.parametrize("workflow", ["wan22_5b_latent", "ltxv_img_to_video"])
def test_the_noise_mask_keeps_the_start_frame_under_asag(host, workflow):
    model, pos, neg, latent = IMAGE_TO_VIDEO[workflow](host)[:4]
    guided = ksampler(host, sampling.asag_on(host, model, "fast"), pos, neg, latent)
    kept = latent["noise_mask"].expand_as(latent["samples"]) == 0
    torch.testing.assert_close(guided[kept], latent["samples"][kept], rtol=0, atol=1e-6)
    assert _differs(guided[~kept], latent["samples"][~kept])


# ---------------------------------------------------------------------------------------------
# the plan spans all spatiotemporal tokens
# ---------------------------------------------------------------------------------------------

FRAMES, HEIGHT, WIDTH = 3, 8, 4
TEXT_TOKENS = 7  # tiny_dits.conditioning's default
# family: (channels, patch (t, h, w), all layers, text tokens in the block's attention)
SPANS = {
    "wan21": (16, (1, 2, 2), "b0-b2", 0),
    "wan22": (48, (1, 2, 2), "b0-b2", 0),
    "ltxv": (128, (1, 1, 1), "b0-b2", 0),
    "mochi": (12, (1, 2, 2), "b0-b2", TEXT_TOKENS),  # joint visual + text attention
    "hunyuan_video": (16, (1, 2, 2), "double0-1,single0-1", TEXT_TOKENS),  # joint, double and single blocks
}


@pytest.mark.parametrize("family", list(SPANS))
def test_the_plan_spans_every_spatiotemporal_token(host, family, sinkhorn_calls, qk_tokens):
    channels, (pt, ph, pw), layers, text = SPANS[family]
    latent = {"samples": torch.zeros(1, channels, FRAMES, HEIGHT, WIDTH)}
    pos, neg = tiny_dits.conditioning(family)
    model = sampling.asag_on(host, tiny_dits.FAMILIES[family](), "fast", "ASAGAdvanced", layers=layers)
    host.nodes.KSampler().sample(model, 1, STEPS, 4.0, "euler", "normal", pos, neg, latent)
    tokens = (FRAMES // pt) * (HEIGHT // ph) * (WIDTH // pw) + text
    n_layers = 4 if family == "hunyuan_video" else 3
    assert len(qk_tokens) == STEPS * n_layers, "one Sinkhorn call per step and chosen block"
    assert len({layer for layer, _, _ in sinkhorn_calls}) == n_layers
    assert set(qk_tokens) == {(tokens, tokens)}


# ---------------------------------------------------------------------------------------------
# STG beside ASAG: SkipLayerGuidanceDiT (post-CFG, its own pass) on Wan and LTXV
# ---------------------------------------------------------------------------------------------

def _slg(model, block):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    return SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, double_layers=block, single_layers="").result[0]


@pytest.mark.parametrize("order", ["asag-after", "asag-before"])
@pytest.mark.parametrize("block", ["2", "1"], ids=["slg-b2", "slg-on-asag-b1"])
@pytest.mark.parametrize("family", ["wan21", "ltxv"])
def test_skip_layer_guidance_beside_asag(host, family, block, order, sinkhorn_calls):
    """Both apply, and with one Euler step (the sample is then linear in the guided prediction)
    their effects add up: x_both − x_cfg = (x_slg − x_cfg) + (x_asag − x_cfg). SLG skips block 2
    (another block than ASAG's auto b1) or block 1 (ASAG's own: SLG's pass then never reaches it)."""
    base = tiny_dits.FAMILIES[family]()
    pos, neg = tiny_dits.conditioning(family)
    latent = tiny_dits.latent(family)

    def step(model):
        return ksampler(host, model, pos, neg, latent, steps=1, cfg=4.0)

    plain = step(base)
    effect_slg = step(_slg(base, block)) - plain
    effect_asag = step(sampling.asag_on(host, base, "fast")) - plain
    effects = {}
    for path in sampling.PATHS:
        both = sampling.asag_on(host, _slg(base, block), path) if order == "asag-after" else _slg(
            sampling.asag_on(host, base, path), block)
        sinkhorn_calls.clear()
        with Forwards(base) as calls:
            effects[path] = step(both) - plain
        assert len(sinkhorn_calls) == 1, "ASAG's adversarial rows only, not SLG's pass"
        asag_calls = [3] if path == "fast" else [2, 1]
        assert sorted(calls.batches) == sorted(asag_calls + [1]), "ASAG's call(s), then SLG's own pass"
    assert effect_slg.abs().max() > 1e-3 and effect_asag.abs().max() > 1e-3
    torch.testing.assert_close(effects["fast"], effect_slg + effect_asag, rtol=1e-4,
                               atol=1e-4 * float(effects["fast"].abs().max()))
    assert_relative(effects["fast"] + plain, effects["separate"] + plain)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

BAD_LAYERS = [
    ("wan21", "b99", ["'b99'", "b0-b2"]),
    ("wan21", "m0", ["'m0'", "U-Net", "b0-b2"]),  # a U-Net layer on a video DiT
    ("ltxv", "b14,b19", ["'b14'", "b0-b2"]),  # STG's published LTXV layers on a 3-block model
    ("hunyuan_video", "single5", ["'single5'", "double0-1", "single0-1"]),
    ("sd15", "b15", ["'b15'", "DiT", "m0"]),  # a video template's layer on an image model
]


@pytest.mark.parametrize("family, layers, named", BAD_LAYERS, ids=[f"{f}-{spec}" for f, spec, _ in BAD_LAYERS])
def test_a_layer_the_model_lacks_names_the_input_and_the_valid_layers(host, family, layers, named):
    import tiny_models

    model = {**tiny_dits.FAMILIES, **tiny_models.FAMILIES}[family]()
    options = repr(model.model_options)
    with pytest.raises(ValueError) as raised:
        sampling.patch(host, "ASAGAdvanced", model, layers=layers)
    message = str(raised.value)
    assert message.startswith("layers"), message
    for part in named:
        assert part in message, f"{part!r} missing from: {message}"
    assert repr(model.model_options) == options, "the input model must be left as it was"


def test_a_range_past_the_last_block_is_named_as_written(host):
    with pytest.raises(ValueError, match=r"^layers: 'b1-b5' runs past the end: the WAN21_T2V model has 3 such "
                                         r"blocks \(0-2\); its layers are: b0-b2$"):
        sampling.patch(host, "ASAGAdvanced", tiny_dits.wan21(), layers="b1-b5")


def test_an_image_model_given_a_video_latent(host):
    """SD1.5 given EmptyHunyuanLatentVideo's 5-D latent: ComfyUI's own U-Net fails (conv2d on a
    5-D input, deep in comfy/ldm), with or without ASAG; ASAG adds nothing to that error and
    leaves nothing behind: the ASAG model samples an image latent as before."""
    import tiny_models
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo

    sd15 = tiny_models.sd15()
    asag = sampling.asag_on(host, sd15, "fast")
    pos, neg = tiny_models.conditioning("sd15")
    image_latent = tiny_models.latent("sd15")
    before = ksampler(host, asag, pos, neg, image_latent)
    (video_latent,) = EmptyHunyuanLatentVideo().generate(64, 64, 5, 1)

    errors = []
    for model in (sd15, asag):
        with pytest.raises(RuntimeError) as raised:
            ksampler(host, model, pos, neg, video_latent)
        errors.append(str(raised.value))
    assert errors[0] == errors[1], "ASAG must not change what ComfyUI reports"
    assert "conv2d" in errors[0] and "4D" in errors[0], errors[0]  # ComfyUI's, naming the 5-D input
    assert torch.equal(ksampler(host, asag, pos, neg, image_latent), before)
