"""The ASAG node's fast path (nodes/guidance_step.py) on every sampler path, and what it must
survive: memory-based batch splitting, a node holding the batch slot, per-slot patches,
caching nodes and a second sampling thread.

Reference for every equality: the separate pass (another node holds
``sampler_calc_cond_batch_function``, so the adversarial branch is a model call of its own,
which is how the ASAG node worked before the fast path), and ComfyUI's own CFGGuider.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import sampling
import tiny_dits
import tiny_models
import torch

pytestmark = pytest.mark.host

STEPS = 3
FAMILIES = ("sd15", "sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def models(host):
    return {family: tiny_models.FAMILIES[family]() for family in FAMILIES}


class ModelCalls:
    """Forward calls of the diffusion model, and the batch each one got."""

    def __init__(self, model):
        self.batches = []
        self.handle = model.model.diffusion_model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.batches.append(args[0].shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def assert_relative(actual, expected, tol=1e-5):
    diff = float((actual - expected).abs().max())
    assert diff <= tol * float(expected.abs().max()), f"max |diff| {diff} vs output scale {float(expected.abs().max())}"


# ---------------------------------------------------------------------------------------------
# every sampler path
# ---------------------------------------------------------------------------------------------

def _noise_sampler_sigmas(model, seed=1):
    from comfy_extras import nodes_custom_sampler as ncs

    (noise,) = ncs.RandomNoise().get_noise(seed)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)
    return noise, sampler, sigmas


def _sample(host, how, model, family, cfg=4.0):
    """One sampling of ``model`` through ComfyUI sampler node ``how``."""
    from comfy_extras import nodes_custom_sampler as ncs

    pos, neg = tiny_models.conditioning(family)
    latent = tiny_models.latent(family)
    if how == "KSampler":
        (out,) = host.nodes.KSampler().sample(model, 1, STEPS, cfg, "euler", "normal", pos, neg, latent)
    elif how == "KSamplerAdvanced":
        (out,) = host.nodes.KSamplerAdvanced().sample(model, "enable", 1, STEPS, cfg, "euler", "normal", pos, neg,
                                                      latent, 0, 10000, "disable")
    elif how == "SamplerCustom":
        _, sampler, sigmas = _noise_sampler_sigmas(model)
        out, _ = ncs.SamplerCustom().sample(model, True, 1, cfg, pos, neg, sampler, sigmas, latent)
    else:
        noise, sampler, sigmas = _noise_sampler_sigmas(model)
        if how == "CFGGuider":
            (guider,) = ncs.CFGGuider().get_guider(model, pos, neg, cfg)
        else:  # BasicGuider: cfg 1, no uncond
            (guider,) = ncs.BasicGuider().get_guider(model, pos)
        out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)
    return out["samples"]


SAMPLER_PATHS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "CFGGuider", "BasicGuider")


@pytest.mark.parametrize("how", SAMPLER_PATHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampler_path_takes_the_fast_path(host, models, family, how, sinkhorn_calls):
    model = models[family]
    rows = 1 if how == "BasicGuider" else 2  # cond (+ uncond)
    with ModelCalls(model) as calls:
        fast = _sample(host, how, sampling.asag_on(host, model, "fast"), family)
    assert calls.batches == [rows + 1] * STEPS, "one model call per step: cond, (uncond,) adversarial"
    per_step = len(sinkhorn_calls) // STEPS
    assert per_step >= 1 and len(sinkhorn_calls) == per_step * STEPS
    assert {batch for _, batch, _ in sinkhorn_calls} == {1}, "the Sinkhorn attention sees the adversarial row only"

    with ModelCalls(model) as calls:
        separate = _sample(host, how, sampling.asag_on(host, model, "separate"), family)
    assert calls.batches == [rows, 1] * STEPS, "the separate pass: a second model call per step"
    assert_relative(fast, separate)


def test_scale_zero_is_the_plain_sampler_on_the_fast_path(host, models):
    model = models["sd15"]
    assert torch.equal(_sample(host, "KSampler", sampling.asag_on(host, model, "fast", scale=0.0), "sd15"),
                       _sample(host, "KSampler", model, "sd15"))


def test_a_forced_memory_split_keeps_working(host, models, monkeypatch, sinkhorn_calls):
    """ComfyUI splits a batched call by free memory: when no two conds fit, each runs alone."""
    family = "sd15"
    model = sampling.asag_on(host, models[family], "fast")
    whole = _sample(host, "KSampler", model, family)
    sinkhorn_calls.clear()
    monkeypatch.setattr(models[family].model, "memory_required", lambda *args, **kwargs: float("inf"))
    with ModelCalls(models[family]) as calls:
        split = _sample(host, "KSampler", model, family)
    assert calls.batches == [1, 1, 1] * STEPS, "cond, uncond and adversarial rows in calls of their own"
    assert len(sinkhorn_calls) == STEPS and {batch for _, batch, _ in sinkhorn_calls} == {1}
    assert_relative(split, whole)


# ---------------------------------------------------------------------------------------------
# a node that holds the batch slot: SkipLayerGuidanceDiTSimple
# ---------------------------------------------------------------------------------------------

def _slg_simple(model):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiTSimple

    return SkipLayerGuidanceDiTSimple.execute(model, 0.0, 1.0, double_layers="0", single_layers="").result[0]


def _guider_sample(host, model, family, cfg, scale=None):
    """SamplerCustomAdvanced with ASAGGuider (scale given) or ComfyUI's CFGGuider (scale None)."""
    from comfy_extras import nodes_custom_sampler as ncs

    if scale is None:
        guider = sampling.cfg_guider(host, model, family, cfg)
    else:
        guider = sampling.asag_guider(host, model, family, cfg, scale)
    noise, sampler, sigmas = _noise_sampler_sigmas(model)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_models.latent(family))
    return out["samples"]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_guider_keeps_skip_layer_guidance(host, models, family, caplog):
    model = models[family]
    slg = _slg_simple(model)
    cfg = 4.0
    # scale 0: exactly ComfyUI's CFGGuider, SLG included
    assert torch.equal(_guider_sample(host, slg, family, cfg, scale=0.0), _guider_sample(host, slg, family, cfg))

    with caplog.at_level(logging.INFO, logger="comfyui-asag"):
        guided = _guider_sample(host, slg, family, cfg, scale=1.5)
    told = [r for r in caplog.records if "separate model pass" in r.getMessage()]
    assert len(told) == 1, "one info line per sampling run when another node holds the batch slot"
    assert "calc_cond_batch_function" in told[0].getMessage()

    without_slg = _guider_sample(host, model, family, cfg, scale=1.5)
    assert (guided - without_slg).abs().max() > 1e-3, "SkipLayerGuidance had no effect under ASAGGuider"
    # and it is the same guidance the ASAG node gives on the SLG model under CFGGuider
    node = _guider_sample(host, sampling.patch(host, "ASAG", slg, scale=1.5), family, cfg)
    assert_relative(guided, node)


def test_slg_applied_after_asag_takes_the_slot(host, models, caplog, sinkhorn_calls):
    """SLG claims the slot after ASAG: ASAG falls back to its separate pass, nothing else changes."""
    family = "flux"
    asag_then_slg = _slg_simple(sampling.asag_on(host, models[family], "fast"))
    slg_then_asag = sampling.asag_on(host, _slg_simple(models[family]), "fast")
    with caplog.at_level(logging.INFO, logger="comfyui-asag"):
        a = _sample(host, "KSampler", asag_then_slg, family)
    assert sinkhorn_calls and len([r for r in caplog.records if "separate model pass" in r.getMessage()]) == 1
    assert_relative(a, _sample(host, "KSampler", slg_then_asag, family))


# ---------------------------------------------------------------------------------------------
# pre-CFG functions: the guider runs them like CFGGuider, before the ASAG term
# ---------------------------------------------------------------------------------------------

def test_guider_runs_pre_cfg_functions(host, models):
    family = "sd15"
    seen = []

    def damp_uncond(args):
        seen.append(len(args["conds_out"]))
        cond, uncond = args["conds_out"]
        return [cond, uncond * 0.5]

    model = models[family].clone()
    model.set_model_sampler_pre_cfg_function(damp_uncond)
    guided = _guider_sample(host, model, family, 4.0, scale=1.5)
    assert seen == [2] * STEPS, "the pre-CFG function must see cond and uncond once per step"
    assert (guided - _guider_sample(host, models[family], family, 4.0, scale=1.5)).abs().max() > 1e-3
    node = _guider_sample(host, sampling.patch(host, "ASAG", model, scale=1.5), family, 4.0)
    assert_relative(guided, node)


# ---------------------------------------------------------------------------------------------
# patches that index per-slot tensors by cond_or_uncond (IPAdapter_plus, InstantID, PuLID)
# ---------------------------------------------------------------------------------------------

def _per_slot_attn2(embeds):
    """attn2 replace in the IPAdapter_plus pattern: per-slot image tokens picked by cond_or_uncond."""
    from comfy.ldm.modules.attention import optimized_attention

    def ip_attn2(q, k, v, extra_options):
        order = extra_options["cond_or_uncond"]
        per = q.shape[0] // len(order)
        tokens = torch.cat([(embeds["cond"], embeds["uncond"])[i] for i in order])  # IndexError on slot 2
        tokens = tokens.repeat_interleave(per, dim=0)[..., : q.shape[-1]].to(q)
        heads = extra_options["n_heads"]
        return optimized_attention(q, k, v, heads) + 0.5 * optimized_attention(q, tokens, tokens, heads)

    return ip_attn2


def _per_slot_attn1(scales):
    from comfy.ldm.modules.attention import optimized_attention

    def ip_attn1(q, k, v, extra_options):
        order = extra_options["cond_or_uncond"]
        per = q.shape[0] // len(order)
        factor = torch.tensor([(scales["cond"], scales["uncond"])[i] for i in order]).repeat_interleave(per)
        return optimized_attention(q * factor[:, None, None].to(q), k, v, extra_options["n_heads"])

    return ip_attn1


@pytest.mark.parametrize("kind", ["attn2", "attn1"])
def test_per_slot_patches_see_the_adversarial_rows_as_conditional(host, models, kind, sinkhorn_calls):
    family = "sd15"
    g = torch.Generator().manual_seed(5)
    model = models[family].clone()
    if kind == "attn2":
        embeds = {"cond": torch.randn(1, 4, 64, generator=g), "uncond": torch.zeros(1, 4, 64)}
        model.set_model_attn2_replace(_per_slot_attn2(embeds), "middle", 0, 0)
    else:  # on a layer after ASAG's m0, so that the batched call reaches it with all three rows
        model.set_model_attn1_replace(_per_slot_attn1({"cond": 1.5, "uncond": 0.5}), "output", 3, 0)
    plain = _guider_sample(host, model, family, 4.0)
    assert torch.equal(_guider_sample(host, model, family, 4.0, scale=0.0), plain)
    guided = _guider_sample(host, model, family, 4.0, scale=1.5)
    assert sinkhorn_calls and (guided - plain).abs().max() > 1e-3
    # the node on either path: the adversarial rows got the conditional slot's tensors in all three
    fast, separate = (_sample(host, "KSampler", sampling.asag_on(host, model, p, scale=1.5), family)
                      for p in sampling.PATHS)
    assert_relative(fast, separate)
    assert_relative(guided, _guider_sample(host, sampling.patch(host, "ASAG", model, scale=1.5), family, 4.0))


# ---------------------------------------------------------------------------------------------
# caching nodes
# ---------------------------------------------------------------------------------------------

def _every_second_call_cached(model):
    """A First-Block-Cache / TeaCache-style DIFFUSION_MODEL wrapper: every second call of a batch
    shape returns that shape's previous output instead of running the model."""
    import comfy.patcher_extension

    calls, last = {}, {}

    def cache(executor, *args, **kwargs):
        shape = tuple(args[0].shape)
        calls[shape] = calls.get(shape, 0) + 1
        if calls[shape] % 2 == 0:
            return last[shape]
        last[shape] = executor(*args, **kwargs)
        return last[shape]

    cached = model.clone()
    cached.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_cache", cache)
    return cached


def _skipped_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "caching node" in r.getMessage()]


@pytest.mark.parametrize("family", ["sd15", "flux"])
@pytest.mark.parametrize("path", sampling.PATHS)
def test_a_cache_that_skips_the_model_drops_the_term_on_those_steps(host, models, family, path, caplog,
                                                                    sinkhorn_calls):
    model = _every_second_call_cached(sampling.asag_on(host, models[family], path, scale=1.5))
    with caplog.at_level(logging.INFO, logger="comfyui-asag"):
        out = _sample(host, "KSampler", model, family)
    assert torch.isfinite(out).all()
    per_step = len({layer for layer, _, _ in sinkhorn_calls})
    # the calls holding the adversarial rows (fast: the one call of each step; separate: the
    # adversarial pass) are cached on step 2: they are computed on steps 1 and 3
    assert len(sinkhorn_calls) == 2 * per_step
    assert len(_skipped_warnings(caplog)) == 1, "one warning per sampling run, never an abort"


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_easycache_and_lazycache(host, models, cache, caplog, sinkhorn_calls):
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    family, steps = "flux", 8
    asag = sampling.asag_on(host, models[family], "fast", scale=1.5)
    pos, neg = tiny_models.conditioning(family)

    def sample(model):
        (out,) = host.nodes.KSampler().sample(model, 1, steps, 4.0, "euler", "normal", pos, neg,
                                              tiny_models.latent(family))
        return out["samples"]

    reference = sample(asag)
    assert len(sinkhorn_calls) == steps
    sinkhorn_calls.clear()
    node = {"EasyCache": EasyCacheNode, "LazyCache": LazyCacheNode}[cache]
    # a threshold so high that every step the cache can skip, it skips
    cached = node.execute(asag, 100.0, 0.0, 1.0, False).result[0]
    with caplog.at_level(logging.INFO, logger="comfyui-asag"):
        out = sample(cached)
    assert torch.isfinite(out).all()
    assert 0 < len(sinkhorn_calls) < steps, f"{cache} skipped no step, or ASAG never ran"
    assert (out - reference).abs().max() > 0
    # EasyCache skips inside the model call (ASAG sees the skip); LazyCache skips the whole
    # prediction, ASAG's functions included
    assert len(_skipped_warnings(caplog)) == (1 if cache == "EasyCache" else 0)


def _attention_out_of_reach(model, block):
    """``model`` whose Wan block ``block`` runs its self-attention with torch's SDPA directly: no
    ComfyUI attention function, so nothing of ComfyUI's (nor ASAG) can reach it."""
    attn = model.model.diffusion_model.blocks[block].self_attn

    def direct_sdpa(x, freqs, transformer_options={}):
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
                   for proj in (attn.q, attn.k, attn.v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return attn.o(out.transpose(1, 2).flatten(2))

    attn.forward = direct_sdpa
    return model


def test_unreachable_attention_still_raises_the_clear_error(host):
    model = _attention_out_of_reach(tiny_dits.FAMILIES["wan21"](), block=1)
    patched = host.node("ASAG").execute(model, 1.5).result[0]  # auto: b1, the block out of reach
    pos, neg = tiny_dits.conditioning("wan21")
    with pytest.raises(RuntimeError, match=r"ASAG: the chosen layers \(\('double_block', 1\)\) of this WAN21_T2V "
                                           "model ran, but their self-attention never reached the Sinkhorn attention"):
        host.nodes.KSampler().sample(patched, 1, 1, 4.0, "euler", "normal", pos, neg,
                                     tiny_dits.latent("wan21"), denoise=1.0)


# ---------------------------------------------------------------------------------------------
# two samplings of one model in two threads
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_two_threads_get_their_single_thread_results(host, models, family):
    """Two samplings of one ASAG model at once (front-ends other than ComfyUI's queue do this):
    each gets its single-thread result. The noise is drawn up front: ComfyUI's noise helper
    seeds torch's global generator, which two threads would share whatever ASAG does."""
    import comfy.sample

    model = sampling.asag_on(host, models[family], "fast", scale=1.5)
    pos, neg = tiny_models.conditioning(family)
    latent = tiny_models.latent(family)["samples"]
    noise = {seed: torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)}

    steps_taken = []

    def one(seed):
        def callback(step, x0, x, total_steps):
            steps_taken.append(seed)
            time.sleep(0.02)  # long enough steps that overlapping runs would interleave

        return comfy.sample.sample(model, noise[seed], STEPS, 4.0, "euler", "normal", pos, neg, latent,
                                   callback=callback, disable_pbar=True, seed=seed)

    alone = {seed: one(seed) for seed in (1, 2)}
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def worker(seed):
        try:
            barrier.wait()
            for _ in range(2):
                results.setdefault(seed, []).append(one(seed))
        except Exception as e:  # noqa: BLE001 - reported below with the thread's seed
            errors.append((seed, e))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert sorted(results) == [1, 2] and all(len(outs) == 2 for outs in results.values())
    for seed, outs in results.items():
        for out in outs:
            assert torch.equal(out, alone[seed]), "a thread's sample differs from its single-thread result"
    # the runs took turns: every run's steps are contiguous
    runs = [steps_taken[i:i + STEPS] for i in range(0, len(steps_taken), STEPS)]
    assert all(len(set(run)) == 1 for run in runs), f"overlapping runs: {steps_taken}"


def test_a_guider_that_batches_by_itself_gets_the_separate_pass(host, models, caplog, sinkhorn_calls):
    """PerpNegGuider evaluates its conds with calc_cond_batch directly and runs the post-CFG
    functions itself: ASAG's term still applies, through the separate pass."""
    from comfy_extras import nodes_custom_sampler as ncs
    from comfy_extras.nodes_perpneg import PerpNegGuider

    family = "sd15"
    pos, neg = tiny_models.conditioning(family)
    empty, _ = tiny_models.conditioning(family, seed=9)

    def sample(model):
        guider = PerpNegGuider.execute(model, pos, neg, empty, 4.0, 1.0).result[0]
        noise, sampler, sigmas = _noise_sampler_sigmas(model)
        out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_models.latent(family))
        return out["samples"]

    plain = sample(models[family])
    with caplog.at_level(logging.INFO, logger="comfyui-asag"):
        guided = sample(sampling.asag_on(host, models[family], "fast", scale=1.5))
    told = [r.getMessage() for r in caplog.records if "separate model pass" in r.getMessage()]
    assert len(told) == 1 and "this guider evaluates the conds" in told[0]
    assert len(sinkhorn_calls) == STEPS and (guided - plain).abs().max() > 1e-3


def test_skip_layer_guidance_dit_post_cfg_node(host, models, sinkhorn_calls):
    """SkipLayerGuidanceDiT (the post-CFG node, its own extra pass) beside ASAG's batched call:
    both terms apply, and with one Euler step they add up exactly."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    family = "flux"
    base = models[family]
    slg = SkipLayerGuidanceDiT.execute(base, 3.0, 0.0, 1.0, double_layers="0", single_layers="").result[0]

    def step(model):
        from comfy_extras import nodes_custom_sampler as ncs

        pos, neg = tiny_models.conditioning(family)
        (guider,) = ncs.CFGGuider().get_guider(model, pos, neg, 4.0)
        (noise,) = ncs.RandomNoise().get_noise(1)
        (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
        (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", 1, 1.0)
        out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_models.latent(family))
        return out["samples"]

    plain = step(base)
    effect_slg = step(slg) - plain
    effect_asag = step(sampling.asag_on(host, base, "fast", scale=1.5)) - plain
    with ModelCalls(base) as calls:
        effect_both = step(sampling.asag_on(host, slg, "fast", scale=1.5)) - plain
    assert calls.batches == [3, 1], "ASAG's batched call, then SLG's own pass"
    assert sinkhorn_calls and effect_slg.abs().max() > 1e-3 and effect_asag.abs().max() > 1e-3
    torch.testing.assert_close(effect_both, effect_slg + effect_asag, rtol=1e-4,
                               atol=1e-4 * float(effect_both.abs().max()))
