"""ASAG on the model families ComfyUI 0.22 ships, sampled through ComfyUI's KSampler.

Every family is a tiny checkpoint loaded by ComfyUI itself (tests/tiny_families.py). Per family:

* the Sinkhorn runs exactly in the chosen block, exactly once per attention the block itself runs and
  per model evaluation, over exactly the queries and keys that attention spans (computed from the
  latent, patch and text sizes, tiny_families ``Family.attention``), on the adversarial row only;
* the node's batched call (the fast path) equals its separate adversarial pass to 1e-5 relative;
* scale 0 equals the unpatched sampler exactly; scale 1.5 changes the sample.

Which host has which family: these families exist in ComfyUI 0.22; ComfyUI 0.3.64 has ten of them
(Qwen-Image-Edit without 2511's method, HunyuanImage 2.1, Omnigen2, Chroma Radiance, and Wan's
VACE, HuMo, S2V and Animate). Each test runs on every host: a family the host lacks is asserted
absent there (``NEW_IN_0_22``); a family it has is sampled.
"""

from __future__ import annotations

import comfy_host
import pytest
import sampling
import tiny_checkpoints as tc
import tiny_families as tf
import torch
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2
CFG = 4.0
#: ComfyUI versions whose Wan S2V calls its blocks without transformer_options (0.3.64: ``block(x, e=e0,
#: freqs=freqs, context=context)``), so no attention hook reaches them; 0.22 passes them
S2V_UNREACHABLE_BEFORE = (0, 22, 0)


@pytest.fixture(scope="module")
def version(host):
    return comfy_host.comfyui_version(host.root)


@pytest.fixture(scope="module")
def present(host):
    return set(tf.available())


@pytest.fixture(scope="module")
def models(host):
    built = {}

    def get(name):
        if name not in built:
            built[name] = tf.build(name)
        return built[name]

    return get


def flat(samples):
    """A sample as one tensor (LTX-2's is a NestedTensor of its video and audio latents)."""
    if getattr(samples, "is_nested", False):
        return torch.cat([t.flatten() for t in samples.unbind()])
    return samples


def sample(host, model, name, cfg=CFG, latent=None, row=None):
    """KSampler's sample as one tensor; ``row``: only that row of the batch."""
    pos, neg = tf.conditioning(name)
    (out,) = host.nodes.KSampler().sample(model, 1, STEPS, cfg, "euler", "normal", pos, neg,
                                          latent or tf.latent(name), denoise=1.0)
    samples = out["samples"]
    if row is not None:
        parts = samples.unbind() if getattr(samples, "is_nested", False) else (samples,)
        return torch.cat([p[row].flatten() for p in parts])
    return flat(samples)


def batch_noise(host, model, name):
    """How far ComfyUI's own sampler moves one row when the same row is sampled in a batch of 3 instead of
    alone (float32 kernels round differently per batch size), relative to the sample's scale. The fast path
    batches the adversarial row with cond and uncond, the separate pass does not: they can agree no closer.
    Zero-terminal-SNR models (CogVideoX, first sigma 4519) amplify it into the 1e-4 range."""
    first = sample(host, model, name, latent=tf.latent(name, batch=3), row=0)
    one = sample(host, model, name, row=0)
    return float((first - one).abs().max()) / float(one.abs().max())


def observed(calls):
    return [(getattr(c.layer, "patch_key", c.layer), c.rows, c.tokens, c.keys) for c in calls]


def expected(family, attention=None, evaluations=STEPS):
    """Per model evaluation, one Sinkhorn call per attention the chosen block runs, on the one adversarial row."""
    return [(family.auto, 1, q, k) for q, k in (attention or family.attention)] * evaluations


def assert_absent_here(name, version, present):
    """A family this host lacks: it must be one ComfyUI added after 0.3.64, and this host older than 0.22."""
    assert name not in present
    assert name in tf.NEW_IN_0_22, f"ComfyUI {version} lacks {name}, which 0.3.64 already has"
    assert version < (0, 22, 0), f"ComfyUI {version} lacks {name}"


def unreachable_here(name, version) -> bool:
    """Whether this host runs the family's blocks where no attention hook reaches them."""
    return name == "wan22_s2v" and version < S2V_UNREACHABLE_BEFORE


def test_the_host_has_the_families_of_its_version(version, present):
    everything = set(tf.FAMILIES)
    assert present == (everything if version >= (0, 22, 0) else everything - tf.NEW_IN_0_22)


@pytest.mark.parametrize("name", list(tf.FAMILIES))
def test_asag_on_the_family(host, models, version, present, name, sinkhorn_calls):
    if name not in present:
        assert_absent_here(name, version, present)
        return
    family, model = tf.FAMILIES[name], models(name)
    base = sample(host, model, name)
    assert torch.isfinite(base).all()
    off = sample(host, host.node("ASAG").execute(model, 0.0).result[0], name)
    assert torch.equal(off, base), "scale 0 must equal the unpatched sampler exactly"
    assert sinkhorn_calls == []

    if unreachable_here(name, version):
        with pytest.raises(RuntimeError, match="never reached the Sinkhorn attention"):
            sample(host, sampling.asag_on(host, model, "fast"), name)
        return
    fast = sample(host, sampling.asag_on(host, model, "fast"), name)
    assert observed(sinkhorn_calls) == expected(family), "fast path: Sinkhorn calls per evaluation"
    assert torch.isfinite(fast).all()
    assert not torch.allclose(fast, base, atol=1e-3), "ASAG at scale 1.5 changed nothing"

    sinkhorn_calls.clear()
    separate = sample(host, sampling.asag_on(host, model, "separate"), name)
    assert observed(sinkhorn_calls) == expected(family), "separate pass: Sinkhorn calls per evaluation"
    assert_relative(fast, separate, max(1e-5, 2 * batch_noise(host, model, name)))


# ---------------------------------------------------------------------------------------------
# cfg 1: distilled models (FLUX.2 Klein, Z-Image-Turbo) run cond and the adversarial row only
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["flux2_klein", "flux2_klein_edit", "zimage", "qwen_image_edit_2511"])
def test_cfg_1(host, models, version, present, name, sinkhorn_calls):
    """FLUX.2 and Qwen-Image-Edit-2511 hand their blocks a modulation that is not one row per batch row
    (FLUX.2: global modulation tuples; 2511: [t rows, t=0 rows]); the fast path must stay exact there."""
    if name not in present:
        assert_absent_here(name, version, present)
        return
    family, model = tf.FAMILIES[name], models(name)
    base = sample(host, model, name, cfg=1.0)
    fast = sample(host, sampling.asag_on(host, model, "fast"), name, cfg=1.0)
    assert observed(sinkhorn_calls) == expected(family)
    sinkhorn_calls.clear()
    separate = sample(host, sampling.asag_on(host, model, "separate"), name, cfg=1.0)
    assert observed(sinkhorn_calls) == expected(family)
    assert not torch.allclose(fast, base, atol=1e-3)
    assert_relative(fast, separate)


# ---------------------------------------------------------------------------------------------
# LTX-2: video and audio self-attention get the plan; text and audio<->video cross-attention do not
# ---------------------------------------------------------------------------------------------

def test_ltx2_audio_and_video_self_attention_only(host, models, version, present, sinkhorn_calls):
    """With 24 audio tokens against 32 video tokens every attention of the block has its own shape:
    video self (32, 32), audio self (24, 24), audio->video (32 queries, 24 keys), video->audio (24, 32),
    text (32 or 24 queries, 7 keys). Only the two self-attentions may get the plan, in the block's order."""
    if "ltxav" not in present:
        assert_absent_here("ltxav", version, present)
        return
    audio = (8, 24, 16)
    latent = {"samples": tf.ltxav_latent(audio=audio)}
    family, model = tf.FAMILIES["ltxav"], models("ltxav")
    for path in sampling.PATHS:
        sinkhorn_calls.clear()
        sample(host, sampling.asag_on(host, model, path), "ltxav", latent=latent)
        assert observed(sinkhorn_calls) == expected(family, tf.ltxav_attention(audio)), path


# ---------------------------------------------------------------------------------------------
# causal Wan with its own autoregressive sampler
# ---------------------------------------------------------------------------------------------

def _ar_sample(host, model, name="wan21_causal_ar"):
    """SamplerCustom with SamplerARVideo at cfg 1 (the AR loop keeps one KV cache per latent batch row)."""
    from comfy_extras import nodes_ar_video
    from comfy_extras import nodes_custom_sampler as ncs

    pos, neg = tf.conditioning(name)
    (sampler,) = nodes_ar_video.SamplerARVideo.execute(1).result
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)
    out, _ = ncs.SamplerCustom().sample(model, True, 1, 1.0, pos, neg, sampler, sigmas, tf.latent(name))
    return out["samples"]


@pytest.mark.parametrize("path", sampling.PATHS)
def test_causal_wan_with_sampler_ar_video_is_refused_clearly(host, models, version, present, path, sinkhorn_calls):
    """SamplerARVideo keeps a KV cache sized to the latent batch (transformer_options["ar_state"]) and calls
    the blocks without transformer_options: ASAG's adversarial row can neither share nor reach it. Until
    ASAG supports the cache, the node must say so, naming SamplerARVideo, instead of a shape error deep in
    the model (fast path) or the generic "cannot reach" message (separate pass)."""
    name = "wan21_causal_ar"
    if name not in present:
        assert_absent_here(name, version, present)
        return
    model = models(name)
    plain = _ar_sample(host, model)
    assert torch.isfinite(plain).all()
    assert torch.equal(_ar_sample(host, host.node("ASAG").execute(model, 0.0).result[0]), plain)
    with pytest.raises(Exception, match="SamplerARVideo"):
        _ar_sample(host, sampling.asag_on(host, model, path))


def test_every_new_family_loads_as_its_class(host, version, present):
    """The seeds are real checkpoints' layouts: ComfyUI detects each as its family's config class (with a
    Hand only where the family says why), and the complete tiny checkpoint detects as its seed does."""
    for name in sorted(present):
        family = tf.FAMILIES[name]
        seed = tc.seed_tensors(family.seed())
        if family.hand is None or family.hand.config_class is None:
            assert tc.detected_class(seed).__name__ == family.config, name
        complete = tc.complete_checkpoint(seed, family.hand)
        assert tc.detect(complete) == tc.detect(seed), name


# ---------------------------------------------------------------------------------------------
# the shared prefix, where a family's record says its blocks may share it
# ---------------------------------------------------------------------------------------------

def _denoise_once(host, guider, name):
    """One Euler step from the first sigma to 0 through ``guider``: the guided prediction itself."""
    from comfy_extras import nodes_custom_sampler as ncs

    (noise,) = ncs.RandomNoise().get_noise(1)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(guider.model_patcher, "normal", 1, 1.0)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tf.latent(name))
    return flat(out["samples"])


#: (family, cfg) whose record shares the prefix but whose call cannot be narrowed exactly, so the pack runs
#: it unshared: Edit-2511's blocks get a modulation of 2 x batch rows ([t rows, t=0 rows])
UNSHARED = {("qwen_image_edit_2511", CFG), ("qwen_image_edit_2511", 1.0)}


@pytest.mark.parametrize("cfg", [CFG, 1.0])
@pytest.mark.parametrize("name", list(tf.FAMILIES))
def test_the_shared_prefix_runs_without_the_adversarial_row_and_changes_nothing(
        host, models, version, present, name, cfg):
    """Where the family's record shares the blocks before the perturbed one, they run on cond (and uncond)
    only, and the guided prediction equals the unshared call's (FLUX.2's global modulation tuples and
    Qwen-Image-Edit-2511's [t, t=0] modulation rows included). A record that does not share: no prefix."""
    from test_shared_prefix import _assert_close, _hook_count, rows_seen

    if name not in present:
        assert_absent_here(name, version, present)
        return
    model = models(name)
    diffusion_model = model.model.diffusion_model
    shares = host.internal("nodes.families").family_of(diffusion_model).prefix
    pos, neg = tf.conditioning(name)
    if unreachable_here(name, version):
        guider = host.node("ASAGGuider").execute(model, pos, neg, cfg, 1.5).result[0]
        with pytest.raises(RuntimeError, match="never reached the Sinkhorn attention"):
            _denoise_once(host, guider, name)
        return
    results = {}
    for share in (False, True):
        guider = host.node("ASAGGuider").execute(model, pos, neg, cfg, 1.5).result[0]
        guider.step.share_prefix = share
        prefix = host.internal("nodes.model_layers").prefix_modules(diffusion_model, guider.plan.layers)
        assert bool(prefix) == shares, f"{name}: prefix {len(prefix)} blocks, the record says shared={shares}"
        hooks = _hook_count(diffusion_model)
        with rows_seen(prefix) as seen:
            results[share] = _denoise_once(host, guider, name)
        full = 3 if cfg != 1.0 else 2  # cond, [uncond,] adversarial
        narrowed = share and (name, cfg) not in UNSHARED
        assert all(rows == [full - 1 if narrowed else full] for rows in seen.values()), (share, list(seen.values()))
        assert _hook_count(diffusion_model) == hooks, "hooks left on the diffusion model"
    _assert_close(results[True], results[False])
